"""The contract every saliency transform shares, and the base of the mixes.

A transform is called ``t(images, saliency, labels)`` and returns a :class:`SalientBatch`. The base
class validates inputs, turns labels into ``(B, K)`` soft labels, samples the per-sample
application mask (``p`` is applied exactly once) and lets the sampled parameters be returned and
replayed. :class:`MixTransform` adds what every mix shares: the partner permutation, one pixel
function applied to images and saliency alike, and the label ``mix_soft_labels(labels, perm,
share * applied)``.

Randomness comes from the ``generator`` given to the call, else from the constructor's
``generator``, else from the global stream of the images' device. Parameters are sampled on the
generator's device and moved to the images' device, which is an asynchronous copy, not a host
sync. The call-time generator is handed to the sampling code through a context variable, so one
transform can be called from several threads with different generators.
"""

from __future__ import annotations

import inspect
import math
from contextvars import ContextVar
from typing import Any, ClassVar, Literal, NamedTuple, cast, overload

import torch
from torch import Tensor, nn

from salaug._checks import (
    check_choice,
    check_float,
    check_generator,
    check_images,
    check_int,
    check_saliency,
)
from salaug.transforms.labels import mix_soft_labels, to_soft_labels

__all__ = [
    "Interpolation",
    "MixTransform",
    "Params",
    "ParamsRecord",
    "SaliencyTransform",
    "SalientBatch",
    "is_flat",
    "saliency_share",
    "sample_beta",
    "sample_perm",
    "sample_uniform",
]

# key -> (dtype kind, shape); a shape entry is an int, a dimension name resolved by
# ``SaliencyTransform.param_dims`` ("B", "C", "H", "W", ...) or "*" (any size)
ParamSpec = dict[str, tuple[Literal["bool", "int", "float"], tuple[int | str, ...]]]


class ParamsRecord(NamedTuple):
    """What a :class:`Params` dict was sampled for; a replay on anything else is refused.

    ``options`` are the sampling transform's :attr:`~SaliencyTransform.replay_options` as
    ``(name, value)`` pairs: the options that change what a replay of the same params does.
    """

    transform: str
    batch_size: int
    size: tuple[int, int]
    options: tuple[tuple[str, object], ...] = ()


class Params(dict[str, Tensor]):
    """The sampled parameters of a call: a ``dict`` of tensors that remembers what it was sampled for.

    ``sampled_for`` is a :class:`ParamsRecord` (transform class, batch size, image ``(H, W)``); a
    replay (``t(..., params=params)``) on another transform, batch size or image size is refused.
    A plain ``dict`` (e.g. rebuilt by a comprehension) is accepted with its keys, dtypes and shapes
    checked, but without that record.
    """

    def __init__(self, *args: Any, sampled_for: ParamsRecord | None = None, **kwargs: Tensor) -> None:
        super().__init__(*args, **kwargs)
        self.sampled_for = sampled_for

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),), {"sampled_for": self.sampled_for})


class SalientBatch(NamedTuple):
    """What every transform returns.

    Attributes:
        images: ``(B, C, H, W)``, same dtype and device as the input images.
        saliency: ``(B, 1, H, W)`` float32 in ``[0, 1]``, transformed together with the images;
            ``None`` when the call was given ``saliency=None`` (flat).
        labels: ``(B, K)`` float32 soft labels, rows summing to 1.
    """

    images: Tensor
    saliency: Tensor | None
    labels: Tensor


def _on(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def sample_uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None,
                   low: float | Tensor = 0.0, high: float | Tensor = 1.0) -> Tensor:
    """Uniform samples in ``[low, high)`` of ``shape`` on ``device`` (float32)."""
    u = torch.rand(shape, generator=generator, device=_on(generator, device)).to(device)
    return low + (high - low) * u if not (isinstance(low, float) and low == 0.0 and high == 1.0) else u


_GAMMA_ROUNDS = 16  # rejection rounds drawn at once; all rejected has probability < 0.05 ** 16 ~ 1e-21


def _log_gamma(k: float, shape: tuple[int, ...], device: torch.device,
               generator: torch.Generator | None) -> Tensor:
    """``log`` of ``Gamma(k, 1)`` samples of ``shape`` (float64), batched, from ``generator`` only.

    Marsaglia and Tsang's squeeze-free rejection method with ``_GAMMA_ROUNDS`` candidate rounds
    drawn at once and the first accepted one kept (acceptance >= 0.95 per round for ``k >= 1``), so
    there is no data-dependent loop or host sync. For ``k < 1``, ``Gamma(k) = Gamma(k + 1) *
    U ** (1 / k)``, done in log space so that small shapes do not underflow to 0.
    """
    boost = k < 1.0
    d = (k + 1.0 if boost else k) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    rounds = (_GAMMA_ROUNDS, *shape)
    z = torch.randn(rounds, generator=generator, device=device, dtype=torch.float64)
    u = torch.rand(rounds, generator=generator, device=device, dtype=torch.float64)
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp_min(1e-300))
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = accept.to(torch.uint8).argmax(dim=0, keepdim=True)  # first accepted round (0 if none: ~1e-21)
    log_g = math.log(d) + log_v.gather(0, first).squeeze(0)
    if boost:
        log_g = log_g + torch.log(torch.rand(shape, generator=generator, device=device, dtype=torch.float64)) / k
    return log_g


def sample_beta(alpha: float, beta: float, shape: tuple[int, ...], device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
    """``Beta(alpha, beta)`` samples of ``shape`` (float32) on ``device``, drawn from ``generator``.

    ``X / (X + Y)`` with ``X ~ Gamma(alpha)``, ``Y ~ Gamma(beta)`` (computed as
    ``sigmoid(log X - log Y)``, exact for any concentrations), batched on the generator's device.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> lam = sample_beta(2.0, 2.0, (20000,), torch.device("cpu"), g)
        >>> round(lam.mean().item(), 2), bool(lam.min() > 0) and bool(lam.max() < 1)
        (0.5, True)
    """
    on = _on(generator, device)
    log_x = _log_gamma(float(alpha), shape, on, generator)
    log_y = _log_gamma(float(beta), shape, on, generator)
    return torch.sigmoid(log_x - log_y).to(device=device, dtype=torch.float32)


def sample_perm(n: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of ``range(n)`` on ``device`` (partners for mixing)."""
    return torch.randperm(n, generator=generator, device=_on(generator, device)).to(device)


def saliency_share(kept: Tensor, pasted: Tensor, area: Tensor, eps: float = 1e-6) -> Tensor:
    """The partner's label share by saliency mass: ``pasted / (kept + pasted)``.

    Args:
        kept: ``(B,)`` fraction of the target's saliency mass that stays visible.
        pasted: ``(B,)`` fraction of the partner's saliency mass that is pasted in.
        area: ``(B,)`` the area share, used where both masses vanish (never NaN).

    Returns:
        ``(B,)`` float32 in ``[0, 1]``.

    Example:
        >>> saliency_share(torch.tensor([0.75, 0.0]), torch.tensor([0.25, 0.0]), torch.tensor([0.1, 0.3])).tolist()
        [0.25, 0.30000001192092896]
    """
    kept, pasted = kept.to(torch.float32), pasted.to(torch.float32)
    total = kept + pasted
    return torch.where(total > eps, pasted / total.clamp(min=eps), area.to(torch.float32)).clamp(0, 1)


def is_flat(saliency: Tensor, eps: float = 1e-6) -> Tensor:
    """``(B,)`` bool: maps of a ``(B, 1, H, W)`` batch with no contrast (``max - min <= eps``)."""
    flat = saliency.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # 6x faster than aminmax on CPU
    return (hi - lo) <= eps


# (transform, generator) of the call in progress in this thread / task
_CALL: ContextVar[tuple[nn.Module, torch.Generator | None] | None] = ContextVar("salaug_call", default=None)
Interpolation = Literal["bilinear", "nearest"]
_INTERPOLATIONS: tuple[Interpolation, ...] = ("bilinear", "nearest")
# (transform, interpolation) of the call in progress
_RESAMPLING: ContextVar[tuple[nn.Module, Interpolation] | None] = ContextVar("salaug_resampling", default=None)


def is_mask_dtype(x: Tensor) -> bool:
    """Whether ``x`` holds masks or label maps: a bool or integer tensor (replayed by nearest only)."""
    return not (x.is_floating_point() or x.is_complex())


def _kind_ok(t: Tensor, kind: str) -> bool:
    if kind == "bool":
        return t.dtype == torch.bool
    if kind == "float":
        return t.is_floating_point()
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


class SaliencyTransform(nn.Module):
    """Base class of the saliency-guided transforms.

    Subclasses implement :meth:`generate_parameters` (sample everything random, as tensors, and
    the ``"applied"`` mask) and :meth:`apply_transform` (deterministic given the parameters), and
    declare the parameters a replay needs in :attr:`required_params`. A call returns its
    parameters as :class:`Params`, which record the transform class, batch size and image size
    they were sampled for; a replay on anything else is refused (:meth:`check_params`).

    Args:
        num_classes: number of classes K, needed when labels are ``(B,)`` class indices.
        p: probability that each sample is transformed (drawn once per sample).
        generator: optional ``torch.Generator`` for reproducible sampling; a ``generator`` passed
            to the call takes precedence.

    Raises:
        TypeError: for arguments of the wrong type (e.g. ``p="0.5"``, ``num_classes=2.5``).
        ValueError: if ``p`` is outside ``[0, 1]`` or ``num_classes`` < 1.
    """

    #: parameters a replay must carry: key -> (dtype kind, shape), see :meth:`check_params`
    required_params: ClassVar[ParamSpec] = {"applied": ("bool", ("B",))}
    #: constructor options that change what a replay of the same params does to the pixels; params
    #: remember their values and a replay on a transform with other values is refused
    replay_options: ClassVar[tuple[str, ...]] = ()
    #: whether ``saliency=None`` (flat) is handled without building a map: the box mixes then draw
    #: their boxes at random and label by area, reading no saliency; the others get a flat map
    flat_without_maps: ClassVar[bool] = False

    def __init__(self, num_classes: int | None = None, *, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, low=1, optional=True)
        self.p = check_float("p", p, low=0.0, high=1.0)
        self.generator = check_generator(generator)

    # -- to implement ---------------------------------------------------------------------------
    def generate_parameters(self, images: Tensor, saliency: Tensor) -> dict[str, Tensor]:
        """Sample the random parameters for this batch; must include ``"applied"`` ``(B,)`` bool.

        Draw from :attr:`active_generator` (the helpers :meth:`sample_applied` and
        :meth:`sample_partners` do).
        """
        raise NotImplementedError

    def apply_transform(self, images: Tensor, saliency: Tensor, labels: Tensor, params: Params) -> SalientBatch:
        """Apply the transform with fixed ``params``; ``labels`` are already ``(B, K)`` soft."""
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------------
    @property
    def active_generator(self) -> torch.Generator | None:
        """The generator of the call in progress (the call's, else the constructor's)."""
        call = _CALL.get()
        return call[1] if call is not None and call[0] is self else self.generator

    @property
    def default_interpolation(self) -> Interpolation:
        """How a call resamples float images when it does not say (``"bilinear"``)."""
        return "bilinear"

    @property
    def active_interpolation(self) -> Interpolation:
        """How the call in progress resamples and mixes pixels: ``"bilinear"`` or ``"nearest"``.

        ``"nearest"`` (masks): every output pixel takes the value of one input pixel, of the image
        it came from; nothing is blended, and pixels that show no image are 0 (as in the saliency).
        """
        call = _RESAMPLING.get()
        return call[1] if call is not None and call[0] is self else self.default_interpolation

    def sample_applied(self, batch_size: int, device: torch.device) -> Tensor:
        """``(B,)`` bool: which samples are transformed (probability ``p`` each, drawn once)."""
        return sample_uniform((batch_size,), device, self.active_generator) < self.p

    def sample_partners(self, batch_size: int, device: torch.device) -> Tensor:
        """``(B,)`` long: each sample's mixing partner, a random permutation of the batch."""
        return sample_perm(batch_size, device, self.active_generator)

    def param_dims(self, images: Tensor) -> dict[str, int]:
        """Sizes of the named dimensions in :attr:`required_params` for ``images``."""
        b, c, h, w = images.shape
        return {"B": b, "C": c, "H": h, "W": w}

    def param_spec(self) -> ParamSpec:
        """The parameters this instance needs (:attr:`required_params`, per option where it varies)."""
        return self.required_params

    def check_params(self, params: object, images: Tensor) -> Params:
        """Check replayed ``params`` against what they were sampled for and :meth:`param_spec`.

        Shapes and dtypes only: no tensor value is read, so this never syncs with the device.

        Returns:
            The params, moved to the images' device.

        Raises:
            TypeError: if ``params`` is not a dict of tensors.
            ValueError: params of another transform, batch size or image size; a missing key or a
                key of the wrong dtype or shape. The message says what to pass instead.
        """
        name = type(self).__name__
        if not isinstance(params, dict):
            raise TypeError(f"params must be the dict returned by a call of {name} with return_params=True, "
                            f"got {type(params).__name__}")
        b, _, h, w = images.shape
        record = getattr(params, "sampled_for", None)
        if isinstance(record, ParamsRecord):
            if record.transform != _qualname(type(self)):
                raise ValueError(f"params were sampled by {record.transform.rsplit('.', 1)[-1]}, not {name}; "
                                 f"replay params only on the transform that returned them")
            if record.batch_size != b:
                raise ValueError(f"params were sampled for a batch of {record.batch_size} but this batch has {b}; "
                                 "replay parameters only on batches of the same size")
            if tuple(record.size) != (h, w):
                raise ValueError(f"params were sampled for images of {record.size[0]}x{record.size[1]} but these are "
                                 f"{h}x{w}; replay parameters only on images of the same size (resize first)")
            self._check_options(record)
        spec = self.param_spec()
        missing = [k for k in spec if k not in params]
        if missing:
            raise ValueError(f"params for {name} must contain {list(spec)}, missing {missing}; pass the dict "
                             f"returned by a call of the same transform with return_params=True")
        dims = self.param_dims(images)
        for key, (kind, shape) in spec.items():
            value = params[key]
            want = tuple(dims.get(d, d) if isinstance(d, str) else d for d in shape)
            if not isinstance(value, Tensor):
                raise TypeError(f"params[{key!r}] must be a tensor of shape {want}, got {type(value).__name__}")
            fits = value.ndim == len(want) and all(d == "*" or d == n for d, n in zip(want, value.shape, strict=True))
            if not fits or not _kind_ok(value, kind):
                what = "batch" if value.ndim and value.shape[0] != b else "shape"
                raise ValueError(f"params[{key!r}] is {value.dtype} of shape {tuple(value.shape)}, expected {kind} of "
                                 f"shape {want} for this {what} of images {tuple(images.shape)}; replay params only "
                                 "on a batch like the one they were sampled for")
        dev = images.device
        return Params({k: (v.to(dev) if isinstance(v, Tensor) else v) for k, v in params.items()},
                      sampled_for=record if isinstance(record, ParamsRecord) else None)

    def _options(self) -> tuple[tuple[str, object], ...]:
        return tuple((name, getattr(self, name)) for name in self.replay_options)

    def _check_options(self, record: ParamsRecord) -> None:
        """Refuse params sampled under other :attr:`replay_options` (an older record has none)."""
        mine = dict(self._options())
        for name, value in record.options:
            if name in mine and mine[name] != value:
                what = type(self).__name__
                raise ValueError(f"params were sampled by {what}({name}={value!r}) but this {what} has "
                                 f"{name}={mine[name]!r}, which changes the output; replay them on a {what} with "
                                 f"{name}={value!r}")

    # -- the call -------------------------------------------------------------------------------
    @overload
    def forward(self, images: Tensor, saliency: Tensor | None, labels: Tensor, *, num_classes: int | None = ...,
                params: dict[str, Tensor] | None = ..., return_params: Literal[False] = ...,
                generator: torch.Generator | None = ..., interpolation: Interpolation | None = ...) -> SalientBatch: ...

    @overload
    def forward(self, images: Tensor, saliency: Tensor | None, labels: Tensor, *, num_classes: int | None = ...,
                params: dict[str, Tensor] | None = ..., return_params: Literal[True],
                generator: torch.Generator | None = ...,
                interpolation: Interpolation | None = ...) -> tuple[SalientBatch, Params]: ...

    def forward(self, images: Tensor, saliency: Tensor | None, labels: Tensor, *, num_classes: int | None = None,
                params: dict[str, Tensor] | None = None, return_params: bool = False,
                generator: torch.Generator | None = None, interpolation: Interpolation | None = None):
        """Transform a batch.

        Masks and label maps move with the images by a replay: sample on the images with
        ``return_params=True``, then call ``t(masks, saliency, labels, params=params)``. A replay on
        a bool or integer tensor keeps its dtype and values (``interpolation="nearest"``); a float
        mask asks for the same with ``interpolation="nearest"``.

        Args:
            images: ``(B, C, H, W)`` floating point, any normalisation, any memory format; on a
                replay (``params`` given) also bool or integer masks / label maps.
            saliency: ``(B, 1, H, W)`` (or lower resolution ``(B, 1, h, w)`` of the same aspect,
                as a feature map of the images) in ``[0, 1]``, or ``None``: flat saliency (no
                information: random placement, area labels), the output's ``saliency`` is then
                ``None`` too. The box mixes (SnapMix, SaliencyMix, ResizeMix) read no map at all
                then; the others are given a map of ones.
            labels: ``(B,)`` class indices (needs ``num_classes``) or ``(B, K)`` probabilities.
            num_classes: overrides the constructor's ``num_classes`` for this call.
            params: parameters returned by an earlier call (``return_params=True``) to replay the
                same transform on another batch of the same size (e.g. segmentation masks).
            return_params: also return the sampled parameters.
            generator: draws this call's randomness, overriding the constructor's ``generator``.
            interpolation: ``"nearest"``: every output pixel (images and saliency) is the value of
                one input pixel of the image it came from: resizes by nearest neighbour, pixel-wise
                mixes give each pixel to the image of larger weight, and pixels that show no image
                (erased, padding) are 0. ``"bilinear"``: the transform's resampling (float images
                only). ``None`` (default): ``"nearest"`` for bool / integer images, else the
                transform's own (``"bilinear"``; :class:`~salaug.transforms.SalientPaste`: its
                ``interpolation``).

        Returns:
            :class:`SalientBatch` ``(images, saliency, labels)``, and the :class:`Params` if asked.

        Raises:
            TypeError: bool / integer images without ``params`` (the message says how to replay),
                and other malformed inputs or parameters (see messages).
            ValueError: ``interpolation="bilinear"`` on bool / integer images, and malformed inputs
                or parameters.

        Example:
            >>> import torch
            >>> from salaug.transforms import SnapMix
            >>> x, s = torch.rand(4, 3, 16, 16), torch.rand(4, 1, 16, 16)
            >>> masks = torch.randint(0, 3, (4, 1, 16, 16))  # label maps of classes 0, 1, 2
            >>> t = SnapMix(num_classes=4, p=1.0, generator=torch.Generator().manual_seed(0))
            >>> out, params = t(x, s, torch.arange(4), return_params=True)
            >>> moved = t(masks, s, torch.arange(4), params=params).images
            >>> moved.dtype, sorted(moved.unique().tolist())
            (torch.int64, [0, 1, 2])
        """
        replay = params is not None
        if isinstance(images, Tensor) and is_mask_dtype(images) and not replay:
            raise TypeError(
                f"images must be a floating-point tensor, got {images.dtype}; convert images with images.float() / "
                "255 (or torchvision.transforms.v2.ToDtype(torch.float32, scale=True)). Masks and label maps move "
                "with the images by a replay: call the transform on the images with return_params=True, then "
                "t(masks, saliency, labels, params=params), which keeps their dtype and values")
        images = check_images(images, finite=True, masks=replay)
        mode = self._interpolation(images, interpolation)
        flat = saliency is None
        if flat:
            b, _, h, w = images.shape
            saliency = None if self.flat_without_maps else torch.ones((b, 1, h, w), device=images.device)
        else:
            saliency = check_saliency(saliency, images)
        maps = cast(Tensor, saliency)  # None only reaches the transforms that read no map when flat
        k = self.num_classes if num_classes is None else check_int("num_classes", num_classes, low=1)
        soft = to_soft_labels(labels, images.shape[0], k, images.device)
        call = _RESAMPLING.set((self, mode))
        try:
            if params is None:
                g = self.generator if generator is None else check_generator(generator)
                token = _CALL.set((self, g))
                try:
                    raw = self.generate_parameters(images, maps)
                finally:
                    _CALL.reset(token)
                b, _, h, w = images.shape
                params = Params(raw, sampled_for=ParamsRecord(_qualname(type(self)), b, (h, w), self._options()))
                used = params
            else:
                used = self.check_params(params, images)
            out = self.apply_transform(images, maps, soft, used)
        finally:
            _RESAMPLING.reset(call)
        if flat:
            out = out._replace(saliency=None)
        return (out, params) if return_params else out

    def _interpolation(self, images: Tensor, interpolation: Interpolation | None) -> Interpolation:
        """The call's resampling: the one asked for, else nearest for masks, else the transform's."""
        if interpolation is None:
            return "nearest" if is_mask_dtype(images) else self.default_interpolation
        mode = check_choice("interpolation", interpolation, _INTERPOLATIONS)
        if mode == "bilinear" and is_mask_dtype(images):
            raise ValueError(f"interpolation='bilinear' blends pixels and cannot keep the values of {images.dtype} "
                             "masks; leave interpolation unset (nearest) or replay on float images")
        return mode

    def extra_repr(self) -> str:
        """The constructor's arguments, in its order (the generator left out)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters
                 if n not in ("self", "generator") and hasattr(self, n)]
        return ", ".join(f"{n}={getattr(self, n)!r}" for n in names)


def check_transform(transform: object) -> SaliencyTransform:
    """The one check that ``transform`` is a salaug transform (the augmenter's and the callback's).

    Raises:
        TypeError: anything else, with an example of what to pass.
    """
    if not isinstance(transform, SaliencyTransform):
        raise TypeError(f"transform must be a salaug transform (e.g. salaug.SaliencyMix(num_classes=10)), "
                        f"got {type(transform).__name__}")
    return transform


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class MixTransform(SaliencyTransform):
    """Base of the mixes: each sample takes content from a partner ``perm[i]`` of the same batch.

    :meth:`generate_parameters` draws ``applied`` and ``perm`` and then asks :meth:`sample_mix`
    for the rest. :meth:`apply_transform` computes a pixel plan once (:meth:`pixel_plan`), runs the
    one pixel function :meth:`mix_pixels` on the images and on the saliency, and mixes the labels
    with ``mix_soft_labels(labels, perm, partner_share * applied)``. A mix states only how it
    samples (:meth:`sample_mix`), what it pastes (:meth:`pixel_plan`, :meth:`mix_pixels`) and the
    partner's share (:meth:`area_share` and, for ``labels="saliency"``, :meth:`saliency_masses`).

    Params keys: ``applied`` ``(B,)`` bool and ``perm`` ``(B,)`` int64, plus each mix's own.

    Args:
        num_classes: number of classes K, needed when labels are ``(B,)`` class indices.
        labels: ``"area"`` or ``"saliency"`` for mixes that offer both rules (``None``: none).
        p: probability that each sample is mixed.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Example:
        A plain CutMix (the left half of the partner pasted in) takes four short methods:

        >>> from salaug.transforms._ops import paste
        >>> class HalfMix(MixTransform):
        ...     def sample_mix(self, images, saliency, applied, perm):
        ...         return {}
        ...     def pixel_plan(self, params, size):
        ...         left = torch.arange(size[1]) < size[1] // 2
        ...         return left.view(1, 1, 1, -1) & params["applied"].view(-1, 1, 1, 1)
        ...     def mix_pixels(self, x, params, plan, *, is_saliency=False):
        ...         return paste(plan, x[params["perm"]], x)
        ...     def area_share(self, params, size):
        ...         return torch.full((params["perm"].shape[0],), 0.5)
        >>> x = torch.stack((torch.zeros(3, 4, 4), torch.ones(3, 4, 4)))
        >>> g = torch.Generator().manual_seed(0)
        >>> out = HalfMix(2)(x, torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), generator=g)
        >>> out.labels.tolist(), out.images.mean((1, 2, 3)).tolist()
        ([[0.5, 0.5], [0.5, 0.5]], [0.5, 0.5])
    """

    required_params: ClassVar[ParamSpec] = {"applied": ("bool", ("B",)), "perm": ("int", ("B",))}
    #: whether the pixel function can leave ``[0, 1]`` on saliency (resampling rounding)
    clamp_saliency: ClassVar[bool] = True

    def __init__(self, num_classes: int | None = None, *, labels: str | None = None, p: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, p=p, generator=generator)
        if labels is not None:
            self.labels = check_choice("labels", labels, ("area", "saliency"))

    # -- to implement -------------------------------------------------------------------------------
    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        """Sample this mix's own parameters (boxes, cells, ...) given ``applied`` and ``perm``."""
        raise NotImplementedError

    def pixel_plan(self, params: Params, size: tuple[int, int]) -> Any:
        """Whatever :meth:`mix_pixels` needs, computed once for images and saliency (masks, grids)."""
        return None

    def mix_pixels(self, x: Tensor, params: Params, plan: Any, *, is_saliency: bool = False) -> Tensor:
        """Mix ``(B, C, H, W)`` ``x`` with ``x[perm]``: the same function for images and saliency.

        ``is_saliency`` only chooses the value of pixels that show no image (a padded canvas's
        fill is 0 in the saliency).
        """
        raise NotImplementedError

    def area_share(self, params: Params, size: tuple[int, int]) -> Tensor:
        """``(B,)`` the partner's share by area (the pasted pixels' share of the visible canvas)."""
        raise NotImplementedError

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        """``(kept, pasted)``: the target's surviving mass and the partner's pasted mass, ``(B,)`` each."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    def sample_flat_mix(self, images: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        """:meth:`sample_mix` on flat saliency without a map (the transforms with ``flat_without_maps``)."""
        raise NotImplementedError

    def generate_parameters(self, images: Tensor, saliency: Tensor | None) -> dict[str, Tensor]:
        b = images.shape[0]
        applied = self.sample_applied(b, images.device)
        perm = self.sample_partners(b, images.device)
        mix = self.sample_flat_mix(images, applied, perm) if saliency is None else \
            self.sample_mix(images, saliency, applied, perm)
        return {"applied": applied, "perm": perm, **mix}

    def mass_share(self, kept: Tensor, pasted: Tensor, area: Tensor) -> Tensor:
        """``(B,)`` the partner's share from the masses (:func:`saliency_share`; SnapMix may differ)."""
        return saliency_share(kept, pasted, area)

    def partner_share(self, saliency: Tensor, params: Params) -> Tensor:
        """``(B,)`` the partner's label share, by the ``labels`` rule (before ``applied``).

        With ``labels="saliency"``, a pair where either map is flat (no saliency information, e.g.
        all zero) gets the area share, so flat saliency gives exactly the area labels.
        """
        area = self.area_share(params, (saliency.shape[-2], saliency.shape[-1]))
        if getattr(self, "labels", "area") == "area":
            return area
        kept, pasted = self.saliency_masses(saliency, params)
        flat = is_flat(saliency)
        return torch.where(flat | flat[params["perm"]], area, self.mass_share(kept, pasted, area))

    def apply_transform(self, images: Tensor, saliency: Tensor | None, labels: Tensor,
                        params: Params) -> SalientBatch:
        size = (images.shape[-2], images.shape[-1])
        plan = self.pixel_plan(params, size)
        out = self.mix_pixels(images, params, plan)
        if saliency is None:  # flat without a map: area labels, nothing to mix
            share = self.area_share(params, size) * params["applied"]
            return SalientBatch(out, None, mix_soft_labels(labels, params["perm"], share))
        sal = self.mix_pixels(saliency, params, plan, is_saliency=True)
        if self.clamp_saliency:
            sal = sal.clamp(0, 1)
        share = self.partner_share(saliency, params) * params["applied"]
        return SalientBatch(out, sal, mix_soft_labels(labels, params["perm"], share))
