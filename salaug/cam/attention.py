"""TransMix building blocks: the last block's CLS attention of a ViT, the box on the token grid, the label share.

TransMix (Chen et al., CVPR 2022) labels a CutMix batch of a vision transformer from the forward
the model runs anyway: the attention row of the class token in the last block, averaged over
heads and restricted to the patch tokens, says how much of the image the prediction looks at; the
share of that attention inside the pasted box, blended 50/50 with the box's area share, is the
partner's label weight. This module holds the pure parts, with no hooks on models:

* :func:`find_attention` picks the attention module (the last one, or a named one);
* :func:`attention_input` takes the token input out of a forward pre-hook's arguments;
* :func:`cls_attention` recomputes the CLS row ``softmax(q_cls kᵀ · scale)`` from that input,
  because torchvision's ``VisionTransformer`` runs its attention with ``need_weights=False`` and
  timm's fused attention never builds the matrix;
* :func:`tokens_from_mask` brings a pixel mask (the pasted box) to the token grid.

The label rule that blends the attention share with the area share is
:func:`salaug.transforms.labels.transmix_share` (the CAM engine imports nothing of augmentation).

Two layouts are understood: ``torch.nn.MultiheadAttention`` (torchvision's ViT blocks'
``self_attention``) and timm-style attention (a ``qkv`` ``nn.Linear`` to ``3 * inner`` features,
an int ``num_heads``, an optional ``scale``, optional ``q_norm`` / ``k_norm`` applied per head).

Example:
    >>> import torch
    >>> from salaug.models import tiny_vit
    >>> vit = tiny_vit(num_classes=10, num_layers=2, hidden_dim=32, mlp_dim=64).eval()
    >>> name, attn_module = find_attention(vit)
    >>> name
    'encoder.layers.encoder_layer_1.self_attention'
    >>> tokens = torch.randn(2, 1 + 8 * 8, 32)            # what the module receives in the forward
    >>> attn = cls_attention(attn_module, tokens)        # (B, N) over the 8 x 8 patches
    >>> attn.shape, bool(attn.sum(1).le(1 + 1e-6).all())
    (torch.Size([2, 64]), True)
    >>> box = torch.zeros(2, 1, 32, 32); box[..., :16, :16] = 1.0   # pasted top-left quarter
    >>> tokens_from_mask(box, 8).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salaug._checks import check_int, check_saliency_shape, value_checks_on
from salaug.cam.layers import resolve_target_layer, unwrap_model

__all__ = ["attention_input", "cls_attention", "find_attention", "is_attention", "tokens_from_mask"]


def _is_timm_attention(module: nn.Module) -> bool:
    qkv, heads = getattr(module, "qkv", None), getattr(module, "num_heads", None)
    if not isinstance(qkv, nn.Linear) or isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        return False
    return qkv.out_features % 3 == 0 and (qkv.out_features // 3) % heads == 0


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention layer this module understands (see the module doc).

    Example:
        >>> is_attention(nn.MultiheadAttention(8, 2)), is_attention(nn.Linear(8, 24))
        (True, False)
    """
    return isinstance(module, nn.MultiheadAttention) or _is_timm_attention(module)


def find_attention(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """Find the attention module whose CLS row TransMix reads: a named one, or the model's last.

    Args:
        model: the ViT (``torch.compile`` / DDP wrappers are looked through; names are relative to
            the wrapped model, as :func:`salaug.cam.layers.unwrap_model` returns it).
        name: dotted name of the module (integer parts index ``nn.Sequential`` children and may be
            negative), e.g. ``"encoder.layers.-1.self_attention"`` or ``"blocks.11.attn"``.
            ``None``: the last attention module in registration order (``model.named_modules()``),
            which in a ViT is the last block's.

    Returns:
        ``(name, module)``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``name`` is not a string.
        ValueError: the model has no attention module, ``name`` names none, or it names a module
            that is not attention (the message lists the model's attention modules).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True))
        >>> find_attention(net)[0]
        '1'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (a ViT), got {type(model).__name__}")
    inner = unwrap_model(model)
    candidates = [n for n, m in inner.named_modules() if is_attention(m)]
    if not candidates:
        raise ValueError(
            f"{type(inner).__name__} has no attention module: expected a torch.nn.MultiheadAttention (torchvision's "
            "VisionTransformer) or a timm-style attention (a `qkv` nn.Linear to 3 * dim features and an int "
            "`num_heads`); TransMix labels need a vision transformer"
        )
    shown = candidates if len(candidates) <= 6 else [*candidates[:2], "...", *candidates[-3:]]
    if name is None:
        last = candidates[-1]
        return last, inner.get_submodule(last)
    if not isinstance(name, str):
        raise TypeError(
            f"name must be a dotted module name or None, got {type(name).__name__}; e.g. name={shown[-1]!r}"
        )
    try:
        found, module = resolve_target_layer(inner, name, wrapper=model)
    except ValueError:
        raise ValueError(f"{name!r} is not a submodule of {type(inner).__name__}; its attention modules are "
                         f"{shown}") from None
    if not is_attention(module):
        raise ValueError(f"{name!r} is a {type(module).__name__}, not an attention module; pass one of {shown} "
                         "(or name=None for the last)")
    return found, module


def attention_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The token input of an attention forward, from a forward pre-hook's ``(args, kwargs)``.

    For ``nn.MultiheadAttention`` it is the ``query``, which must also be the ``key`` (self-attention,
    as in a ViT block, which calls ``attn(x, x, x)``); for timm-style attention the first argument.

    Args:
        module: an attention module (see :func:`is_attention`).
        args, kwargs: the positional and keyword arguments of its forward
            (``register_forward_pre_hook(hook, with_kwargs=True)`` passes both).

    Returns:
        The tokens, as given to the module (no copy).

    Raises:
        TypeError: no token tensor among the arguments.
        ValueError: a cross-attention call (key is not query).

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.zeros(1, 5, 8)
        >>> attention_input(mha, (x, x, x), {}) is x
        True
    """
    _check_module(module)
    names = ("query", "key") if isinstance(module, nn.MultiheadAttention) else ("x",)
    given = list(args[:len(names)]) + [kwargs.get(n) for n in names[len(args):]]
    tokens = given[0]
    if not isinstance(tokens, Tensor):
        raise TypeError(f"the forward of {type(module).__name__} received no token tensor as {names[0]!r} "
                         f"(got {type(tokens).__name__}); pass the hook's args and kwargs (with_kwargs=True)")
    if len(names) == 2 and given[1] is not tokens:
        raise ValueError("this MultiheadAttention call is cross-attention (key is not query); the CLS attention row is "
                         "defined for the self-attention of a ViT block, attn(x, x, x)")
    return tokens


@dataclass(frozen=True)
class _QK:
    """The query / key projections of one attention layout."""

    wq: Tensor
    bq: Tensor | None
    wk: Tensor
    bk: Tensor | None
    num_heads: int
    scale: float | Tensor
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    batch_first: bool


def _check_module(module: object) -> None:
    if not isinstance(module, nn.Module) or not is_attention(module):
        raise TypeError(
            f"expected an attention module (torch.nn.MultiheadAttention, or timm-style with a `qkv` nn.Linear to "
            f"3 * dim features and an int `num_heads`), got {type(module).__name__}; find one with "
            "salaug.cam.attention.find_attention(model)"
        )


def _mha_projections(mha: nn.MultiheadAttention) -> _QK:
    if not mha._qkv_same_embed_dim or mha.in_proj_weight is None:
        raise ValueError(f"MultiheadAttention with kdim={mha.kdim}, vdim={mha.vdim} != embed_dim={mha.embed_dim} is "
                         "not supported; the CLS attention row is defined for a ViT's self-attention "
                         "(kdim == vdim == embed_dim)")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("MultiheadAttention with add_bias_kv=True or add_zero_attn=True appends keys that are no "
                         "tokens and is not supported; build it with the defaults, as a ViT block does")
    c, w, b = mha.embed_dim, mha.in_proj_weight, mha.in_proj_bias
    return _QK(w[:c], None if b is None else b[:c], w[c:2 * c], None if b is None else b[c:2 * c],
               mha.num_heads, mha.head_dim ** -0.5, None, None, mha.batch_first)


def _timm_projections(module: nn.Module) -> _QK:
    qkv = cast(nn.Linear, module.qkv)       # both checked by _is_timm_attention
    heads = cast(int, module.num_heads)
    inner = qkv.out_features // 3
    bias = qkv.bias
    bq, bk = (None, None) if bias is None else (bias[:inner], bias[inner:2 * inner])
    q_bias = getattr(module, "q_bias", None)  # BEiT layout: separate q / v biases, no bias on k
    if bias is None and isinstance(q_bias, Tensor):
        k_bias = getattr(module, "k_bias", None)
        bq, bk = q_bias, k_bias if isinstance(k_bias, Tensor) else None
    scale = getattr(module, "scale", None)
    if scale is None:
        scale = (inner // heads) ** -0.5
    elif isinstance(scale, Tensor) and scale.numel() == 1:
        scale = scale.detach().reshape(())
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"{type(module).__name__}.scale must be a number or a one-element tensor, got "
                         f"{type(scale).__name__}; the attention logits are q kᵀ · scale")
    else:
        scale = float(scale)
    norms = [getattr(module, n, None) for n in ("q_norm", "k_norm")]
    q_norm, k_norm = (m if isinstance(m, nn.Module) and not isinstance(m, nn.Identity) else None for m in norms)
    return _QK(qkv.weight[:inner], bq, qkv.weight[inner:2 * inner], bk, heads, scale, q_norm, k_norm, True)


def _float32_call(module: nn.Module, x: Tensor) -> Tensor:
    """Run ``module`` on float32 ``x`` with its floating parameters and buffers as float32 copies."""
    state = {n: t.detach().float() if t.is_floating_point() else t
             for n, t in itertools.chain(module.named_parameters(), module.named_buffers())}
    return torch.func.functional_call(module, state, (x,))


def cls_attention(module: nn.Module, tokens: Tensor, *, num_prefix_tokens: int = 1) -> Tensor:
    """The class token's attention over the patch tokens, averaged over heads, as the block computed it.

    Recomputes ``softmax(q_0 kᵀ · scale)`` for the first token's query against all ``L`` tokens with
    matmuls batched over samples and heads (without a ``k_norm`` the query is folded into the key
    weights, so the keys are never built), keeps the patch columns (drops the first
    ``num_prefix_tokens``: class, distillation, register tokens) and averages over heads. This is
    TransMix's ``attn[:, :, 0, num_prefix_tokens:].mean(1)``, taken before attention dropout. Each
    row sums to at most 1 (the prefix columns hold the rest). The arithmetic runs in float32 with
    autocast off, on detached copies, so fp16 / bf16 tokens and half-precision weights give a
    finite result. Attention masks passed to the forward are not applied (ViTs pass none).

    Args:
        module: the attention module (see :func:`find_attention`): a ``nn.MultiheadAttention``
            with ``kdim == vdim == embed_dim`` and no ``add_bias_kv`` / ``add_zero_attn``, or a
            timm-style attention (``q_norm`` / ``k_norm`` applied per head when present).
        tokens: the input the module received in the forward (see :func:`attention_input`):
            ``(B, L, C)`` with ``L = num_prefix_tokens + N``; ``(L, B, C)`` for a
            ``MultiheadAttention`` built with ``batch_first=False``.
        num_prefix_tokens: how many leading tokens are not patches (the first is the class token
            whose row is read; then e.g. register tokens). ``0``: a ViT without a class token
            (global average pooling): the attention each patch receives, averaged over all queries
            and heads (the pooled token's view; builds the full ``L x L`` matrix).

    Returns:
        ``(B, N)`` float32, detached, on ``tokens.device``.

    Raises:
        TypeError: ``module`` is not an understood attention module, ``tokens`` is not a
            floating-point tensor, or ``num_prefix_tokens`` is not an int.
        ValueError: an unsupported layout, ``tokens`` not 3-D, of the wrong width, or with no
            patch token after the prefix.

    Example:
        >>> mha = nn.MultiheadAttention(16, 4, batch_first=True)
        >>> a = cls_attention(mha, torch.randn(3, 1 + 4, 16))
        >>> a.shape, a.dtype, bool((a > 0).all())
        (torch.Size([3, 4]), torch.float32, True)
    """
    _check_module(module)
    qk = _mha_projections(module) if isinstance(module, nn.MultiheadAttention) else _timm_projections(module)
    check_int("num_prefix_tokens", num_prefix_tokens, low=0)
    prefix = int(num_prefix_tokens)
    x = _check_tokens(tokens, qk, prefix, type(module).__name__)
    if prefix == 0:
        return _pooled_attention(qk, x)
    b, length, _ = x.shape
    heads = qk.num_heads
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.float()
        q = F.linear(x[:, :1], qk.wq.detach().float(), None if qk.bq is None else qk.bq.detach().float())
        q = q.view(b, 1, heads, -1).transpose(1, 2)              # (B, h, 1, d), as timm's q_norm sees it
        if qk.q_norm is not None:
            q = _float32_call(qk.q_norm, q)
        q = q.squeeze(2)
        wk = qk.wk.detach().float()
        if qk.k_norm is None:
            # q·(W_k x + b_k) = (W_kᵀ q)·x + q·b_k: fold the query into the key weights (L·C·h work instead
            # of L·C·C for the keys); q·b_k is one constant per row, which the softmax cancels.
            u = (q.unsqueeze(2) @ wk.view(heads, -1, wk.shape[1])).squeeze(2)   # (B, h, C)
            logits = u @ x.transpose(1, 2)                                        # (B, h, L)
        else:
            k = F.linear(x, wk, None if qk.bk is None else qk.bk.detach().float())
            k = _float32_call(qk.k_norm, k.view(b, length, heads, -1).transpose(1, 2))  # (B, h, L, d)
            logits = (q.unsqueeze(2) @ k.transpose(-2, -1)).squeeze(2)
        scale = qk.scale.float() if isinstance(qk.scale, Tensor) else qk.scale
        row = logits.mul_(scale).softmax(-1)                     # (B, h, L)
        return row[:, :, prefix:].mean(1)


def _pooled_attention(qk: _QK, x: Tensor) -> Tensor:
    """``(B, L)`` the attention each token receives, averaged over queries and heads (no class token)."""
    b, length, _ = x.shape
    heads = qk.num_heads
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.float()
        q = F.linear(x, qk.wq.detach().float(), None if qk.bq is None else qk.bq.detach().float())
        k = F.linear(x, qk.wk.detach().float(), None if qk.bk is None else qk.bk.detach().float())
        q = q.view(b, length, heads, -1).transpose(1, 2)
        k = k.view(b, length, heads, -1).transpose(1, 2)
        if qk.q_norm is not None:
            q = _float32_call(qk.q_norm, q)
        if qk.k_norm is not None:
            k = _float32_call(qk.k_norm, k)
        scale = qk.scale.float() if isinstance(qk.scale, Tensor) else qk.scale
        attn = (q @ k.transpose(-2, -1)).mul_(scale).softmax(-1)   # (B, h, L, L)
        return attn.mean((1, 2))


def _check_tokens(tokens: object, qk: _QK, prefix: int, owner: str) -> Tensor:
    layout = "(B, L, C)" if qk.batch_first else "(L, B, C) (batch_first=False)"
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of shape {layout}, got {type(tokens).__name__}")
    if not tokens.is_floating_point():
        raise TypeError(f"tokens must be floating point (the attention module's input), got {tokens.dtype}")
    if tokens.ndim != 3:
        raise ValueError(f"tokens must have shape {layout}, the input of {owner} in the forward; got "
                         f"{tuple(tokens.shape)}")
    x = tokens.detach() if qk.batch_first else tokens.detach().transpose(0, 1)
    width = qk.wq.shape[1]
    if x.shape[2] != width:
        raise ValueError(f"tokens have width {x.shape[2]} but {owner} expects {width} (shape {layout}); pass the "
                         "input this module received, not another block's")
    if x.shape[1] <= prefix:
        raise ValueError(f"tokens hold {x.shape[1]} tokens, none of them a patch after num_prefix_tokens={prefix}; "
                         "pass the full sequence (class token first, then the patches)")
    return x


def tokens_from_mask(mask: Tensor, grid: int | tuple[int, int]) -> Tensor:
    """Bring a pixel mask (e.g. the pasted box) to a ViT's patch grid: the covered fraction of each patch.

    Patches are flattened row-major, as ViTs flatten them (``conv_proj`` output ``.flatten(2)``).
    Each token gets the mean of the mask over its patch (area pooling). TransMix samples the mask
    with nearest interpolation instead; for a box whose edges lie on patch boundaries every patch
    is wholly inside or outside, so both give the same 0 / 1 tokens. For other boxes nearest
    sampling rounds each partly covered patch to 0 or 1 by one pixel of it, so the token mask's
    mass drifts from the box's area; the covered fraction keeps the two equal, so the attention
    share and the area share describe the same region.

    Args:
        mask: ``(B, 1, H, W)`` (or ``(B, H, W)``) floating values in ``[0, 1]``.
        grid: ``(gh, gw)`` patches per column and row, or one int for a square grid; ``H`` and
            ``W`` must be multiples of it (the patch size).

    Returns:
        ``(B, gh * gw)`` float32 in ``[0, 1]``.

    Raises:
        TypeError: ``mask`` not a floating-point tensor, ``grid`` not ints.
        ValueError: another mask shape, ``H`` / ``W`` not multiples of the grid, or (value checks)
            values outside ``[0, 1]``.

    Example:
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :3] = 1.0
        >>> tokens_from_mask(m, 2).tolist()
        [[1.0, 0.5, 0.0, 0.0]]
    """
    mask = check_saliency_shape(mask, "mask")
    if isinstance(grid, (tuple, list)) and len(grid) != 2:
        raise ValueError(f"grid must be one int or a (gh, gw) pair of patch counts, got {grid!r}; e.g. grid=(8, 8)")
    gh, gw = (grid, grid) if not isinstance(grid, (tuple, list)) else grid
    check_int("grid[0]", gh, low=1)
    check_int("grid[1]", gw, low=1)
    gh, gw = int(gh), int(gw)
    h, w = mask.shape[-2:]
    if h % gh or w % gw:
        raise ValueError(f"mask of size {h}x{w} does not split into a {gh}x{gw} patch grid; the image size must be a "
                         "multiple of the grid (image_size / patch_size patches per side)")
    if value_checks_on(mask):
        lo, hi = torch.aminmax(mask)
        if not bool(lo >= 0) or not bool(hi <= 1):
            raise ValueError(f"mask values must lie in [0, 1], got min {float(lo):.4g}, max {float(hi):.4g}; pass "
                             "the pasted region as a 0 / 1 (or fractional) mask")
    return F.avg_pool2d(mask.float(), (h // gh, w // gw)).flatten(1)
