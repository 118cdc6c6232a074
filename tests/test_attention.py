"""TransMix building blocks against direct computations of the attention.

References: torchvision's ``VisionTransformer`` last block, whose ``nn.MultiheadAttention`` is run
here with ``need_weights=True, average_attn_weights=True`` on the captured input; a timm-style
attention written out below with its explicit ``softmax(q kᵀ · scale)`` matrix; masks and shares
computed by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

from salaug.cam.attention import (
    attention_input,
    cls_attention,
    find_attention,
    is_attention,
    tokens_from_mask,
)
from salaug.transforms.labels import transmix_share

TOL = 1e-5


# -- reference models -----------------------------------------------------------------------------------
def small_vit(seed: int = 0, dropout: float = 0.0) -> VisionTransformer:
    """The brief's small ViT, with attention weights scaled up so that the CLS rows are far from uniform."""
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                            num_classes=10, dropout=dropout, attention_dropout=dropout)
    with torch.no_grad():
        for layer in vit.encoder.layers:
            layer.self_attention.in_proj_weight.normal_(0, 0.4)
            layer.self_attention.in_proj_bias.normal_(0, 0.5)
    return vit


def capture_input(model: nn.Module, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Run ``model`` and return what ``module`` received, taken with :func:`attention_input`."""
    seen: list[torch.Tensor] = []

    def hook(mod, args, kwargs):
        seen.append(attention_input(mod, args, kwargs).detach().clone())

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(images)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


def mha_reference(mha: nn.MultiheadAttention, tokens: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """The CLS row of the head-averaged weights that MultiheadAttention itself returns (no dropout)."""
    was_training = mha.training
    mha.eval()
    with torch.no_grad():
        _, weights = mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=True)
    mha.train(was_training)
    return weights[:, 0, prefix:]


class TimmAttention(nn.Module):
    """timm's Attention layout: fused qkv, per-head q / k norms, scale, explicit matrix for reference."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, qk_norm: bool = False,
                 scale: float | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5 if scale is None else scale
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(0.5)
        self.proj = nn.Linear(dim, dim)

    def matrix(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, _ = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        return (q * self.scale @ k.transpose(-2, -1)).softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)[2]
        return self.proj((self.attn_drop(self.matrix(x)) @ v).transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, **kw) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, num_heads, **kw)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(x)


class TimmViT(nn.Module):
    """A timm-shaped token model: ``blocks.i.attn``, with ``num_prefix_tokens`` leading tokens."""

    def __init__(self, dim: int = 32, depth: int = 3, num_heads: int = 4, num_prefix_tokens: int = 1, **kw) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, num_prefix_tokens, dim))
        self.blocks = nn.Sequential(*(TimmBlock(dim, num_heads, **kw) for _ in range(depth)))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(t.shape[0], -1, -1), t], 1)
        return self.head(self.blocks(t)[:, 0])


def randomize_norms(attn: TimmAttention) -> None:
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            if isinstance(norm, nn.LayerNorm):
                norm.weight.uniform_(0.5, 3.0)
                norm.bias.normal_(0, 0.5)


# -- torchvision VisionTransformer ----------------------------------------------------------------------
@pytest.mark.parametrize("train", [False, True])
def test_torchvision_vit_cls_row_matches_need_weights(train):
    vit = small_vit(dropout=0.2 if train else 0.0).train(train)
    name, mha = find_attention(vit)
    assert name == "encoder.layers.encoder_layer_1.self_attention"
    assert mha is vit.encoder.layers[-1].self_attention
    torch.manual_seed(1)
    tokens = capture_input(vit, mha, torch.rand(6, 3, 32, 32))
    assert tokens.shape == (6, 1 + 64, 64)
    got = cls_attention(mha, tokens)
    want = mha_reference(mha, tokens)
    assert got.shape == (6, 64) and got.dtype == torch.float32 and not got.requires_grad
    assert (got - want).abs().max() <= TOL
    assert mha.training == train  # the module's mode is not touched
    # the rows are far from uniform, so a wrong scale or head split would show
    assert (want - want.mean(1, keepdim=True)).abs().max() > 0.05
    wrong_scale = torch.softmax(torch.log(want.clamp_min(1e-12)) * 2, 1)
    assert (got - wrong_scale).abs().max() > 1e-3


def test_cls_attention_does_not_build_a_graph():
    vit = small_vit()
    mha = vit.encoder.layers[-1].self_attention
    tokens = torch.randn(2, 65, 64, requires_grad=True)
    out = cls_attention(mha, tokens)
    assert not out.requires_grad and tokens.grad is None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_layouts(bias, batch_first):
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(24, 3, bias=bias, batch_first=batch_first)
    with torch.no_grad():
        mha.in_proj_weight.normal_(0, 0.5)
    tokens = torch.randn(5, 10, 24) if batch_first else torch.randn(10, 5, 24)
    got = cls_attention(mha, tokens)
    _, weights = mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=True)
    assert got.shape == (5, 9)
    assert (got - weights[:, 0, 1:]).abs().max() <= TOL


# -- timm-style attention -------------------------------------------------------------------------------
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_timm_style_attention_matches_explicit_matrix(qk_norm, qkv_bias, scale):
    torch.manual_seed(3)
    attn = TimmAttention(32, 4, qkv_bias=qkv_bias, qk_norm=qk_norm, scale=scale)
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 0.4)
    randomize_norms(attn)
    tokens = torch.randn(4, 1 + 16, 32)
    with torch.no_grad():
        want = attn.matrix(tokens)[:, :, 0, 1:].mean(1)
    got = cls_attention(attn, tokens)
    assert got.shape == (4, 16)
    assert (got - want).abs().max() <= TOL
    assert (want - want.mean(1, keepdim=True)).abs().max() > 0.02


def test_timm_style_without_scale_attribute_uses_head_dim():
    torch.manual_seed(4)
    attn = TimmAttention(32, 4)
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 0.4)
    del attn.scale
    tokens = torch.randn(2, 9, 32)
    attn.scale = 8 ** -0.5
    with torch.no_grad():
        want = attn.matrix(tokens)[:, :, 0, 1:].mean(1)
    del attn.scale
    assert (cls_attention(attn, tokens) - want).abs().max() <= TOL


def test_timm_style_beit_biases_and_tensor_scale():
    """BEiT's layout: qkv without bias, separate q_bias / v_bias (none on k); a one-element tensor scale."""
    torch.manual_seed(8)
    attn = TimmAttention(32, 4, qkv_bias=False)
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 0.4)
    attn.q_bias = nn.Parameter(torch.randn(32))
    attn.v_bias = nn.Parameter(torch.randn(32))
    attn.scale = torch.tensor([0.3])  # type: ignore[assignment]
    tokens = torch.randn(3, 17, 32)
    with torch.no_grad():
        bias = torch.cat([attn.q_bias, torch.zeros(32), attn.v_bias])
        q, k, _ = F.linear(tokens, attn.qkv.weight, bias).reshape(3, 17, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        want = (q @ k.transpose(-2, -1) * 0.3).softmax(-1)[:, :, 0, 1:].mean(1)
    assert (cls_attention(attn, tokens) - want).abs().max() <= TOL


def test_prefix_tokens_register_and_distillation():
    torch.manual_seed(5)
    vit = TimmViT(num_prefix_tokens=5)
    with torch.no_grad():
        for block in vit.blocks:
            block.attn.qkv.weight.normal_(0, 0.4)
    name, attn = find_attention(vit)
    assert name == "blocks.2.attn"
    tokens = capture_input(vit, attn, torch.rand(3, 3, 16, 16))
    assert tokens.shape == (3, 5 + 16, 32)
    got = cls_attention(attn, tokens, num_prefix_tokens=5)
    with torch.no_grad():
        full = attn.matrix(tokens)
    assert got.shape == (3, 16)
    assert (got - full[:, :, 0, 5:].mean(1)).abs().max() <= TOL
    # the prefix columns hold the rest of the row
    assert (got.sum(1) + full[:, :, 0, :5].mean(1).sum(1) - 1).abs().max() <= TOL


# -- precision -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_tokens_are_computed_in_float32(dtype):
    vit = small_vit()
    mha = vit.encoder.layers[-1].self_attention
    torch.manual_seed(6)
    tokens = (torch.randn(4, 65, 64) * 60).to(dtype)   # q·k overflows float16
    got = cls_attention(mha, tokens)
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert (got - cls_attention(mha, tokens.float())).abs().max() <= TOL
    if dtype == torch.float16:  # the naive half-precision computation is not finite: the test can fail
        c = 64
        with torch.no_grad():
            w = mha.in_proj_weight.half()
            q = (tokens[:, :1] @ w[:c].T).view(4, 1, 4, 16).transpose(1, 2)
            k = (tokens @ w[c:2 * c].T).view(4, 65, 4, 16).transpose(1, 2)
            naive = (q @ k.transpose(-2, -1)).float().softmax(-1)
        assert not bool(torch.isfinite(naive).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_module_and_autocast(dtype):
    torch.manual_seed(7)
    attn = TimmAttention(32, 4, qk_norm=True)
    randomize_norms(attn)
    tokens = torch.randn(3, 17, 32)
    want = cls_attention(attn, tokens)
    attn_half = copy.deepcopy(attn).to(dtype)
    got = cls_attention(attn_half, tokens.to(dtype))
    assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
    assert (got - want).abs().max() < 0.02      # only the weights' rounding differs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = cls_attention(attn, tokens)
    assert under_autocast.dtype == torch.float32
    assert (under_autocast - want).abs().max() <= TOL


# -- find_attention / attention_input ------------------------------------------------------------------
def test_find_attention_by_name():
    vit = small_vit()
    name, mha = find_attention(vit, "encoder.layers.0.self_attention")
    assert name == "encoder.layers.encoder_layer_0.self_attention" and mha is vit.encoder.layers[0].self_attention
    name, mha = find_attention(vit, "encoder.layers.-1.self_attention")
    assert mha is vit.encoder.layers[1].self_attention
    timm = TimmViT()
    assert find_attention(timm, "blocks.0.attn")[1] is timm.blocks[0].attn
    assert is_attention(timm.blocks[0].attn) and not is_attention(timm.blocks[0])


def test_find_attention_looks_through_wrappers():
    vit = small_vit()
    name, mha = find_attention(nn.DataParallel(vit))
    assert mha is vit.encoder.layers[-1].self_attention and name.startswith("encoder.")


def test_find_attention_errors():
    vit = small_vit()
    with pytest.raises(ValueError, match=r"not an attention module.*encoder_layer_1\.self_attention"):
        find_attention(vit, "encoder.layers.0.mlp")
    with pytest.raises(ValueError, match=r"'encoder\.nope' is not a submodule.*attention modules are"):
        find_attention(vit, "encoder.nope")
    with pytest.raises(ValueError, match="has no attention module.*vision transformer"):
        find_attention(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    with pytest.raises(TypeError, match="name must be a dotted module name"):
        find_attention(vit, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        find_attention("vit")  # type: ignore[arg-type]


def test_qkv_without_num_heads_is_not_attention():
    lookalike = nn.Module()
    lookalike.qkv = nn.Linear(8, 24)
    assert not is_attention(lookalike)
    lookalike.num_heads = 5           # 8 features do not split into 5 heads
    assert not is_attention(lookalike)
    lookalike.num_heads = 2
    assert is_attention(lookalike)


def test_attention_input_forms():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x, other = torch.zeros(1, 5, 8), torch.ones(1, 5, 8)
    assert attention_input(mha, (), {"query": x, "key": x, "value": x}) is x
    assert attention_input(mha, (x,), {"key": x, "value": x}) is x
    with pytest.raises(ValueError, match="cross-attention"):
        attention_input(mha, (x, other, other), {})
    with pytest.raises(TypeError, match="no token tensor"):
        attention_input(mha, (), {})
    timm = TimmAttention(8, 2)
    assert attention_input(timm, (x,), {}) is x and attention_input(timm, (), {"x": x}) is x
    with pytest.raises(TypeError, match="expected an attention module"):
        attention_input(nn.Linear(8, 8), (x,), {})


# -- cls_attention bad input ---------------------------------------------------------------------------
def test_cls_attention_bad_tokens():
    mha = small_vit().encoder.layers[-1].self_attention
    with pytest.raises(ValueError, match=r"must have shape \(B, L, C\).*got \(65, 64\)"):
        cls_attention(mha, torch.randn(65, 64))
    with pytest.raises(ValueError, match=r"must have shape \(B, L, C\)"):
        cls_attention(mha, torch.randn(2, 3, 65, 64))
    with pytest.raises(ValueError, match="width 32 but MultiheadAttention expects 64"):
        cls_attention(mha, torch.randn(2, 65, 32))
    with pytest.raises(TypeError, match="floating point"):
        cls_attention(mha, torch.zeros(2, 65, 64, dtype=torch.long))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        cls_attention(mha, [[0.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="none of them a patch after num_prefix_tokens=1"):
        cls_attention(mha, torch.randn(2, 1, 64))
    with pytest.raises(ValueError, match="num_prefix_tokens must be an int >= 0"):
        cls_attention(mha, torch.randn(2, 65, 64), num_prefix_tokens=-1)
    with pytest.raises(TypeError, match="num_prefix_tokens must be an int"):
        cls_attention(mha, torch.randn(2, 65, 64), num_prefix_tokens=1.5)  # type: ignore[arg-type]


def test_cls_attention_unsupported_modules():
    x = torch.randn(2, 5, 8)
    with pytest.raises(TypeError, match="expected an attention module.*find_attention"):
        cls_attention(nn.Linear(8, 8), x)
    with pytest.raises(ValueError, match="kdim=4, vdim=4 != embed_dim=8"):
        cls_attention(nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True), x)
    with pytest.raises(ValueError, match="add_bias_kv=True or add_zero_attn=True"):
        cls_attention(nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True), x)
    with pytest.raises(ValueError, match="add_bias_kv=True or add_zero_attn=True"):
        cls_attention(nn.MultiheadAttention(8, 2, add_zero_attn=True, batch_first=True), x)
    timm = TimmAttention(8, 2)
    timm.scale = "0.5"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="scale must be a number or a one-element tensor"):
        cls_attention(timm, x)


# -- tokens_from_mask ----------------------------------------------------------------------------------
def test_tokens_from_mask_hand_drawn_box():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 1:5, 2:7] = 1.0            # rows 1-4, columns 2-6, on a 4 x 4 grid of 2 x 2 patches
    got = tokens_from_mask(mask, 4).view(4, 4)
    want = torch.tensor([[0.0, 0.5, 0.5, 0.25],
                         [0.0, 1.0, 1.0, 0.5],
                         [0.0, 0.5, 0.5, 0.25],
                         [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(got, want)
    assert float(got.sum()) * 4 == float(mask.sum())   # mass is the box area


def test_tokens_from_mask_is_row_major_like_torchvision_patches():
    vit = small_vit()
    with torch.no_grad():
        vit.conv_proj.bias.zero_()
    image = torch.zeros(1, 3, 32, 32)
    image[..., 8:12, 20:24] = 1.0        # patch row 2, column 5 of the 8 x 8 grid
    mask = image[:, :1]
    token = tokens_from_mask(mask, 8)
    assert token.argmax().item() == 2 * 8 + 5 and float(token.sum()) == 1.0
    with torch.no_grad():
        embedded = vit._process_input(image)            # (1, 64, hidden)
    assert embedded.abs().sum(-1).flatten().nonzero().flatten().tolist() == [2 * 8 + 5]


def test_tokens_from_mask_equals_nearest_for_patch_aligned_boxes():
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:20, 8:32] = 1.0
    mask[1, :, 0:12, 0:4] = 1.0
    nearest = F.interpolate(mask, size=(8, 8), mode="nearest").flatten(1)
    assert torch.equal(tokens_from_mask(mask, (8, 8)), nearest)


def test_tokens_from_mask_keeps_the_area_where_nearest_drifts():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 2:14, 3:13] = 1.0          # edges inside patches: 120 pixels = 7.5 patches of 16
    nearest = F.interpolate(mask, size=(8, 8), mode="nearest").flatten(1)
    assert float(tokens_from_mask(mask, 8).sum()) == 7.5
    assert float(nearest.sum()) == 9.0   # the patches' top-left pixels: rows and columns 4, 8, 12


def test_tokens_from_mask_rectangular_grid_and_3d_mask():
    mask = torch.zeros(1, 6, 8)
    mask[:, :3, :] = 1.0
    got = tokens_from_mask(mask, (3, 2))          # 2 x 4 patches
    assert torch.equal(got, torch.tensor([[1.0, 1.0, 0.5, 0.5, 0.0, 0.0]]))


def test_tokens_from_mask_bad_input():
    with pytest.raises(ValueError, match="does not split into a 3x3 patch grid"):
        tokens_from_mask(torch.zeros(1, 1, 32, 32), 3)
    with pytest.raises(ValueError, match="does not split into a 4x5 patch grid"):
        tokens_from_mask(torch.zeros(1, 1, 32, 32), (4, 5))
    with pytest.raises(TypeError, match="mask must be floating point"):
        tokens_from_mask(torch.zeros(1, 1, 8, 8, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, 1, H, W\)"):
        tokens_from_mask(torch.zeros(1, 3, 8, 8), 4)
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 1\]"):
        tokens_from_mask(torch.full((1, 1, 8, 8), 2.0), 4)
    with pytest.raises(ValueError, match="grid"):
        tokens_from_mask(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(TypeError, match="grid"):
        tokens_from_mask(torch.zeros(1, 1, 8, 8), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"grid must be one int or a \(gh, gw\) pair"):
        tokens_from_mask(torch.zeros(1, 1, 8, 8), (2, 2, 2))  # type: ignore[arg-type]


# -- transmix_share ------------------------------------------------------------------------------------
def test_transmix_share_by_hand():
    attn = torch.tensor([[0.1, 0.3, 0.2, 0.2],
                         [0.0, 0.0, 0.0, 0.0],
                         [0.4, 0.1, 0.1, 0.2]])
    mask = torch.tensor([[0.0, 1.0, 0.0, 0.0],
                         [1.0, 1.0, 0.0, 0.0],
                         [1.0, 0.5, 0.0, 0.0]])
    area = torch.tensor([0.25, 0.5, 0.375])
    # row 0: 0.3 / 0.8 = 0.375; row 1: no attention -> area; row 2: 0.45 / 0.8 = 0.5625
    got = transmix_share(attn, mask, area)
    assert torch.allclose(got, torch.tensor([(0.375 + 0.25) / 2, 0.5, (0.5625 + 0.375) / 2]), atol=1e-7)
    assert torch.allclose(transmix_share(attn, mask, area, blend=1.0), torch.tensor([0.375, 0.5, 0.5625]))
    assert torch.equal(transmix_share(attn, mask, area, blend=0.0), area)
    assert torch.allclose(transmix_share(attn, mask, area, blend=0.25)[0], torch.tensor(0.25 * 0.375 + 0.75 * 0.25))


def test_transmix_share_non_finite_attention_falls_back_to_area():
    attn = torch.tensor([[float("nan"), 0.5], [0.25, 0.75]], dtype=torch.float16)
    got = transmix_share(attn, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.5, 0.5]))
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor([0.5, (0.25 + 0.5) / 2]))


def test_transmix_share_bad_input():
    a, m, s = torch.rand(2, 4), torch.rand(2, 4), torch.rand(2)
    with pytest.raises(ValueError, match="must agree"):
        transmix_share(a, torch.rand(2, 5), s)
    with pytest.raises(ValueError, match="must agree"):
        transmix_share(a, m, torch.rand(3))
    with pytest.raises(ValueError, match=r"attn must be \(B, N\)"):
        transmix_share(torch.rand(2, 2, 2), m, s)
    with pytest.raises(ValueError, match=r"area_share must be \(B,\)"):
        transmix_share(a, m, torch.rand(2, 1))
    with pytest.raises(TypeError, match="token_mask must be a floating-point tensor"):
        transmix_share(a, m.bool(), s)
    with pytest.raises(TypeError, match="area_share must be a floating-point tensor"):
        transmix_share(a, m, [0.5, 0.5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"blend must be a number in \[0, 1\]"):
        transmix_share(a, m, s, blend=1.5)
    with pytest.raises(TypeError, match="blend must be a number"):
        transmix_share(a, m, s, blend="0.5")  # type: ignore[arg-type]


def test_end_to_end_share_on_a_torchvision_vit():
    """The pieces composed as the forward-label mode will: capture, CLS row, box tokens, share."""
    vit = small_vit()
    _, mha = find_attention(vit)
    images = torch.rand(4, 3, 32, 32)
    box = torch.zeros(4, 1, 32, 32)
    box[..., 8:24, 8:24] = 1.0
    attn = cls_attention(mha, capture_input(vit, mha, images))
    tokens = tokens_from_mask(box, 8)
    share = transmix_share(attn, tokens, box.flatten(1).mean(1))
    want_attn = (mha_reference(mha, capture_input(vit, mha, images)) * tokens).sum(1) / attn.sum(1)
    assert torch.allclose(share, 0.5 * want_attn + 0.5 * 0.25, atol=TOL)
    assert bool(((share >= 0) & (share <= 1)).all())


def test_no_class_token_gives_the_attention_each_patch_receives():
    # a global-pool ViT: num_prefix_tokens=0 averages the full attention matrix over queries and heads
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    tokens = torch.randn(3, 9, 16)
    _, weights = mha(tokens, tokens, tokens, need_weights=True, average_attn_weights=True)  # (B, L, L)
    got = cls_attention(mha, tokens, num_prefix_tokens=0)
    assert got.shape == (3, 9)
    assert (got - weights.mean(1)).abs().max() <= TOL
    assert torch.allclose(got.sum(1), torch.ones(3))
