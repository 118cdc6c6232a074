"""SaliencyCollate: saliency-guided augmentation as a DataLoader ``collate_fn``; CAMSaliency."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import default_collate, get_worker_info

from salaug._batch import field_position, get_field
from salaug._checks import (
    check_choice,
    check_finite,
    check_flag,
    check_images,
    check_int,
    check_key,
    check_targets,
)
from salaug.cam import create_cam
from salaug.cam.base import BaseCAM, model_device, model_on
from salaug.data.masks import MASK_KEY
from salaug.sources import ForwardEvidence, LiveCAM, SaliencySource, StoredMasks


# ---------------------------------------------------------------------------------------------
# Saliency from a frozen model
# ---------------------------------------------------------------------------------------------
class CAMSaliency(SaliencySource):
    """A saliency source from a frozen model and a CAM, for :class:`SaliencyCollate`.

    Calling it runs the CAM, which puts every submodule in eval mode for the call (BatchNorm uses
    its running statistics, dropout is off) and restores each one's mode afterwards. The model is
    not trained: it is a snapshot that each DataLoader worker copies when it starts (with the
    default ``fork`` start method, workers see the weights as they were when the iterator was
    created).

    The caller's model is never moved. With no ``device`` (or the model's own) the CAM runs the
    model where it is; with another ``device`` it runs a copy of the model on that device, made on
    the first call (a snapshot of the weights then).

    The CAM object is rebuilt in each process (it is not pickled), so the source can be sent to
    DataLoader workers. With a CUDA ``device``, use ``num_workers=0`` or a DataLoader with
    ``multiprocessing_context="spawn"`` (CUDA cannot be used in forked workers).

    Args:
        model: a classifier ``(B, C, H, W) -> (B, K)`` logits.
        cam: a CAM name for :func:`salaug.cam.create_cam` (``"gradcam"``, ...) or a CAM class.
        target_layer: dotted name or module of the target layer; ``None`` picks the last conv.
        device: where the CAM runs (default: the model's device). Maps are returned on the
            images' device.
        targets: ``"predicted"`` (CAM of the predicted class) or ``"labels"`` (CAM of the batch's
            labels, passed by :class:`SaliencyCollate`); ``"label"`` is the deprecated spelling.
        output_size: ``None`` (the images' size) or ``"feature"`` (feature-map resolution; the
            transforms resize it, which saves work).

    Shape:
        - images: ``(B, C, H, W)`` float; labels (optional) ``(B,)`` or ``(B, K)``.
        - output: ``(B, 1, H, W)`` (or ``(B, 1, h, w)`` for ``"feature"``) float32 in ``[0, 1]``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: an unknown CAM, target layer, ``targets``, ``output_size`` or ``device``;
            on a call, ``targets="labels"`` without labels.
    """

    uses_labels: bool

    def __init__(self, model: nn.Module, cam: Any = "gradcam", target_layer: Any = None,
                 device: str | torch.device | None = None, *,
                 targets: Literal["predicted", "labels"] = "predicted",
                 output_size: Literal["feature"] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        targets = check_targets("targets", targets, "CAMSaliency")
        check_choice("output_size", output_size, (None, "feature"))
        self.model = model
        self.cam_name = cam
        self.target_layer = target_layer
        try:
            self.device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
        self.targets = targets
        self.uses_labels = targets == "labels"
        self.output_size = output_size
        self._cam: BaseCAM | None = None
        create_cam(cam, model, target_layer=target_layer)  # fail early on an unknown CAM name or target layer

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cam"] = None  # hooks / closures are rebuilt lazily in each process
        return state

    def _get_cam(self):
        if self._cam is None:
            self._cam = create_cam(self.cam_name, model_on(self.model, self.device), target_layer=self.target_layer)
        return self._cam

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        images = check_images(images)
        if self.uses_labels and labels is None:
            raise ValueError(
                "CAMSaliency(targets='labels') needs the batch's labels: call source(images, labels) "
                "(SaliencyCollate does), or use targets='predicted'"
            )
        cam = self._get_cam()
        device = model_device(cam.model) or images.device
        x = images.to(device)
        targets = labels.to(device) if (self.uses_labels and labels is not None) else None
        size = "feature" if self.output_size == "feature" else tuple(images.shape[-2:])
        maps = cam(x, targets=targets, output_size=size)
        return maps.detach().to(device=images.device, dtype=torch.float32)

    def saliency(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """The source protocol's spelling of a call: ``(B, 1, H, W)`` maps of ``images``."""
        return self(images, labels)

    def __repr__(self) -> str:
        return (f"CAMSaliency(model={type(self.model).__name__}, cam={self.cam_name!r}, "
                f"target_layer={self.target_layer!r}, device={self.device}, targets={self.targets!r})")


# ---------------------------------------------------------------------------------------------
# The collate function
# ---------------------------------------------------------------------------------------------
def _derive_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence), for a torch.Generator."""
    state = np.random.SeedSequence([int(e) % (2**64) for e in entropy]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _reuse_shared(buffer: Tensor, result: Tensor) -> Tensor:
    """Write ``result`` into ``buffer`` when that is a shared-memory tensor of the same layout."""
    if (buffer is result or not buffer.is_shared() or buffer.shape != result.shape
            or buffer.dtype != result.dtype or buffer.device != result.device or not buffer.is_contiguous()):
        return result
    return buffer.copy_(result)


def _check_samples(samples: Sequence, image_key: int | str, label_key: int | str,
                   mask_key: int | str | None) -> None:
    """Every sample of one kind (dict, or tuple/list of one length) with the fields the collate
    reads, images (and masks) as tensors of one shape. ``default_collate`` would otherwise fail
    deep inside, with a message that names neither the field nor the fix."""
    first = samples[0]
    is_map = isinstance(first, Mapping)
    for i, sample in enumerate(samples):  # a loop over samples, as default_collate's own
        if isinstance(sample, Mapping) != is_map or not isinstance(sample, (Mapping, tuple, list)):
            raise TypeError(
                f"sample {i} is a {type(sample).__name__} but sample 0 is a {type(first).__name__}; every "
                "sample of a batch must be a dict, or every one a tuple/list of the same fields"
            )
        if not is_map and len(sample) != len(first):
            raise ValueError(f"sample {i} has {len(sample)} fields but sample 0 has {len(first)}")
    get_field(first, image_key, "images", "image_key")
    get_field(first, label_key, "labels", "label_key")
    if mask_key is not None:
        get_field(first, mask_key, "masks (saliency='mask')", "mask_key")
    if not is_map:
        n = len(first)
        where = {"image_key": field_position(image_key, n), "label_key": field_position(label_key, n)}
        if where["image_key"] == where["label_key"]:
            raise ValueError(f"image_key={image_key!r} and label_key={label_key!r} name the same field")
        if mask_key is not None and field_position(mask_key, n) in where.values():
            raise ValueError(
                f"saliency='mask' but the samples have only {n} fields and mask_key={mask_key!r} "
                "points at the image or the label; wrap the dataset with MaskedDataset (which appends "
                "the mask) or pass mask_key=<position of the mask>"
            )
    _check_one_shape(samples, image_key, "image", "image_key",
                     "resize them in the dataset's transform (e.g. v2.Resize((H, W)) or v2.RandomResizedCrop(size))")
    if mask_key is not None:
        _check_one_shape(samples, mask_key, "mask", "mask_key",
                         "give every sample its mask at one resolution (MaskedDataset resizes the stored masks "
                         "to each image, so resize the images first)")


def _check_one_shape(samples: Sequence, key: int | str, what: str, arg: str, fix: str) -> None:
    shapes: dict[tuple, int] = {}
    for i, sample in enumerate(samples):
        value = get_field(sample, key, f"{what}s", arg)
        if not isinstance(value, Tensor):
            if what != "image":
                return  # reported with its batch (see _mask_batch)
            raise TypeError(
                f"sample {i}: the image at image_key={key!r} is a {type(value).__name__}, not a tensor; "
                "give the dataset a transform such as v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, "
                "scale=True)])"
            )
        shapes.setdefault(tuple(value.shape), i)
    if len(shapes) > 1:
        (a, i), (b, j) = list(shapes.items())[:2]
        raise ValueError(f"the {what}s of a batch must share one shape: sample {i} is {a}, sample {j} is {b}; {fix}")


def _mask_batch(stored: object, mask_key: int | str | None) -> Tensor:
    """The collated masks as ``(B, 1, h, w)`` float32."""
    if not isinstance(stored, Tensor):
        raise TypeError(
            f"the mask at mask_key={mask_key!r} must be a tensor (1, h, w) per sample, got "
            f"{type(stored).__name__}; MaskedDataset adds it as a tv_tensors.Mask"
        )
    saliency = stored.as_subclass(Tensor)
    if saliency.ndim == 3:
        saliency = saliency.unsqueeze(1)
    if saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(
            f"the mask at mask_key={mask_key!r} must be (1, h, w) or (h, w) per sample, got "
            f"{tuple(stored.shape[1:])}; keep one saliency channel per image"
        )
    if saliency.is_complex():
        raise TypeError(f"the mask at mask_key={mask_key!r} must be real, got {saliency.dtype}")
    saliency = saliency.to(torch.float32)
    check_finite(saliency, f"the masks at mask_key={mask_key!r}",
                  "recompute them (salaug precompute-masks) or clean the dataset's masks")
    return saliency


def _check_source_output(saliency: object, images: Tensor, source: object) -> None:
    name = getattr(source, "__name__", None) or type(source).__name__
    if not isinstance(saliency, Tensor) or not saliency.is_floating_point():
        got = type(saliency).__name__ if not isinstance(saliency, Tensor) else f"a {saliency.dtype} tensor"
        raise TypeError(f"the saliency source {name} must return a float (B, 1, H, W) tensor, got {got}")
    shape = tuple(saliency.shape)
    if saliency.ndim not in (3, 4) or (saliency.ndim == 4 and shape[1] != 1) or shape[0] != images.shape[0]:
        raise ValueError(
            f"the saliency source {name} returned shape {shape} for images {tuple(images.shape)}; it must "
            f"return ({images.shape[0]}, 1, h, w), one map per image"
        )
    check_finite(saliency, f"the maps of the saliency source {name}",
                  "the source must map every image to finite values in [0, 1]")


def _accepts_generator(transform: Callable) -> bool:
    """Whether ``transform(..., generator=g)`` is accepted (salaug transforms take it at call time)."""
    fn = transform.forward if isinstance(transform, nn.Module) else transform
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any((p.name == "generator" and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
               for p in params)


class SaliencyCollate:
    """A ``collate_fn`` that collates with ``default_collate`` and applies a salaug transform.

    Per batch: ``default_collate(samples)`` → images ``(B, C, H, W)`` float, labels ``(B,)`` or
    ``(B, K)`` → saliency ``(B, 1, H, W)`` from ``saliency`` → ``transform(images, saliency,
    labels)`` → the batch with images and ``(B, K)`` soft labels replaced.

    Output:
        * tuple/list samples: a tuple ``(images, soft_labels, *extras)`` where ``extras`` are the
          sample's other fields in their order (minus the mask, for ``saliency="mask"``),
          collated but **not** transformed (e.g. boxes still describe the un-mixed images), and,
          with ``return_saliency=True``, the transformed saliency ``(B, 1, H, W)`` last;
        * dict samples: the collated dict with ``image_key`` and ``label_key`` replaced; for
          ``saliency="mask"`` the mask entry is removed (or replaced by the transformed saliency
          with ``return_saliency=True``); otherwise ``return_saliency=True`` adds ``"saliency"``.

    Randomness: inside a DataLoader worker the transform draws from a ``torch.Generator`` seeded
    from ``(seed, worker seed)``; the worker seed (``get_worker_info().seed``) is
    ``base_seed + worker_id`` where the DataLoader draws ``base_seed`` from its ``generator`` each
    time an iterator is created. So workers never share a stream, epochs differ, and a run is
    reproducible given ``seed`` and the DataLoader's ``generator``. In the main process
    (``num_workers=0``) a given ``seed`` seeds one stream for the life of the object; with
    ``seed=None`` the transform's own ``generator`` (or the global RNG) is used. The stream is
    passed at call time, ``transform(..., generator=g)``, so the transform object is never
    modified (thread-safe); only a callable that takes no ``generator=`` argument has its
    ``generator`` attribute lent the stream for the duration of a call.

    The object is picklable (DataLoader workers with any start method).

    Args:
        transform: a :class:`salaug.transforms.SaliencyTransform` (or any callable with its
            signature ``t(images, saliency, labels, num_classes=...) -> SalientBatch``).
        saliency: a :class:`~salaug.sources.SaliencySource` (``ModelFree(SpectralResidual())``,
            ``Flat()``, ``StoredMasks(key)`` for the samples' masks, :class:`CAMSaliency` for a frozen
            model), or a callable ``source(images) -> (B, 1, H, W)`` in ``[0, 1]``
            (e.g. ``SpectralResidual()`` or :class:`CAMSaliency`; a source with the attribute
            ``uses_labels = True`` is called ``source(images, labels)``), or ``"mask"``: the samples
            carry their mask (see :class:`MaskedDataset`), any resolution; a low-resolution mask
            is resized bilinearly by the transform.
        image_key, label_key: position (tuple/list samples) or key (dict samples) of the image
            and the label.
        mask_key: position/key of the mask for ``saliency="mask"``; default ``-1`` (last field,
            where :class:`MaskedDataset` appends it) for tuples, ``"saliency"`` for dicts.
        num_classes: K, needed for integer labels unless the transform has it.
        seed: optional integer for reproducible streams (see above).
        return_saliency: also return the transformed saliency.

    Example:
        >>> from salaug.transforms import SaliencyTransform, SalientBatch
        >>> class Identity(SaliencyTransform):
        ...     def generate_parameters(self, images, saliency):
        ...         return {"applied": self.sample_applied(images.shape[0], images.device)}
        ...     def apply_transform(self, images, saliency, labels, params):
        ...         return SalientBatch(images, saliency, labels)
        >>> collate = SaliencyCollate(Identity(), lambda x: x.mean(1, keepdim=True), num_classes=3)
        >>> images, labels = collate([(torch.rand(3, 8, 8), 2), (torch.rand(3, 8, 8), 0)])
        >>> images.shape, labels.tolist()
        (torch.Size([2, 3, 8, 8]), [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    """

    def __init__(self, transform: Callable, saliency: Callable[..., Tensor] | Literal["mask"], *,
                 image_key: int | str = 0, label_key: int | str = 1, mask_key: int | str | None = None,
                 num_classes: int | None = None, seed: int | None = None,
                 return_saliency: bool = False) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be a salaug transform (callable), got {type(transform).__name__}")
        if isinstance(saliency, StoredMasks):  # the source object behind saliency="mask"
            mask_key = mask_key if mask_key is not None else saliency.key
            saliency = "mask"
        if isinstance(saliency, (ForwardEvidence, LiveCAM)):
            raise ValueError(
                f"{type(saliency).__name__} reads the model being trained, which a DataLoader worker does not hold; "
                "use it through SaliencyAugmenter / SaliencyAugmentation, or a frozen model with CAMSaliency(model)"
            )
        if isinstance(saliency, str):
            if saliency != "mask":
                raise ValueError(
                    f"saliency must be a callable source (e.g. SpectralResidual(), CAMSaliency(model)) "
                    f"or 'mask', got {saliency!r}"
                )
        elif not callable(saliency) and not isinstance(saliency, SaliencySource):
            raise TypeError(
                "saliency must be a callable source images -> (B, 1, H, W) (e.g. SpectralResidual(), "
                f"CAMSaliency(model)) or 'mask', got {type(saliency).__name__}"
            )
        check_key("image_key", image_key)
        check_key("label_key", label_key)
        check_key("mask_key", mask_key, optional=True)
        if image_key == label_key:
            raise ValueError(f"image_key and label_key must differ, both are {image_key!r}")
        check_int("num_classes", num_classes, low=1, optional=True)
        check_int("seed", seed, optional=True)
        check_flag("return_saliency", return_saliency)
        self.transform = transform
        self.saliency = saliency
        self.image_key = image_key
        self.label_key = label_key
        self.mask_key = mask_key
        self.num_classes = num_classes
        self.seed = seed
        self.return_saliency = return_saliency
        self._takes_generator = _accepts_generator(transform)
        self._generator: torch.Generator | None = None
        self._stream_key: tuple | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_generator"] = None
        state["_stream_key"] = None
        return state

    def __repr__(self) -> str:
        return (f"SaliencyCollate(transform={self.transform!r}, saliency={self.saliency!r}, "
                f"image_key={self.image_key!r}, label_key={self.label_key!r}, seed={self.seed})")

    # -- randomness -----------------------------------------------------------------------------
    def stream(self) -> torch.Generator | None:
        """The generator this process should draw from (``None``: leave the transform's own)."""
        info = get_worker_info()
        key = (os.getpid(), None if info is None else info.seed)
        if key != self._stream_key:
            self._stream_key = key
            if info is not None:
                entropy = (info.seed,) if self.seed is None else (info.seed, self.seed)
            elif self.seed is not None:
                entropy = (self.seed,)
            else:
                entropy = None
            if entropy is None:
                self._generator = None
            else:
                self._generator = torch.Generator().manual_seed(_derive_seed(*entropy))
        return self._generator

    # -- the call -------------------------------------------------------------------------------
    def _mask_key(self, sample: object) -> int | str:
        if self.mask_key is not None:
            return self.mask_key
        return MASK_KEY if isinstance(sample, Mapping) else -1

    def _transform(self, images: Tensor, saliency: Tensor, labels: Tensor) -> Any:
        generator = self.stream()
        with torch.no_grad():
            if generator is None:
                out = self.transform(images, saliency, labels, num_classes=self.num_classes)
            elif self._takes_generator:
                out = self.transform(images, saliency, labels, num_classes=self.num_classes, generator=generator)
            else:
                out = self._call_swapped(images, saliency, labels, generator)
        if not isinstance(out, Sequence) or len(out) < 3 or not all(isinstance(t, Tensor) for t in (out[0], out[2])) \
                or not (out[1] is None or isinstance(out[1], Tensor)):
            raise TypeError(
                f"the transform {type(self.transform).__name__} must return a SalientBatch (images, saliency, "
                f"labels), got {type(out).__name__}"
            )
        return out

    def _call_swapped(self, images: Tensor, saliency: Tensor, labels: Tensor, generator: torch.Generator) -> Any:
        # a callable without a call-time ``generator=`` (older or third-party transforms): lend it the
        # stream through its ``generator`` attribute. Not thread-safe; salaug transforms never get here.
        if not hasattr(self.transform, "generator"):
            return self.transform(images, saliency, labels, num_classes=self.num_classes)
        saved = self.transform.generator
        self.transform.generator = generator
        try:
            return self.transform(images, saliency, labels, num_classes=self.num_classes)
        finally:
            self.transform.generator = saved

    def __call__(self, samples: Sequence) -> tuple | dict:
        """Collate ``samples`` (a list of tuple/list/dict samples) and transform the batch.

        Raises:
            TypeError, KeyError, IndexError, ValueError: malformed samples (mixed kinds, missing
                fields, images of different sizes or not tensors, non-finite pixels), a saliency
                source or mask of the wrong shape, or a transform that returns something else
                than a ``SalientBatch``; each message names the field or the source and the fix.
        """
        if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)) or len(samples) == 0:
            raise ValueError(
                f"SaliencyCollate needs a non-empty list of samples, got {type(samples).__name__}"
                + (" of length 0" if isinstance(samples, Sequence) else "")
            )
        first = samples[0]
        image_key, label_key = self.image_key, self.label_key
        use_mask = isinstance(self.saliency, str)
        mask_key = self._mask_key(first) if use_mask else None
        _check_samples(samples, image_key, label_key, mask_key)

        try:
            batch = default_collate(list(samples))
        except (RuntimeError, TypeError) as exc:  # another field: the image and mask were checked above
            raise (TypeError if isinstance(exc, TypeError) else RuntimeError)(
                f"default_collate cannot batch the samples' other fields: {exc}; every field must collate "
                "(tensors of one shape, numbers, strings): pad variable-size fields such as per-object "
                "boxes in the dataset, or drop them"
            ) from exc
        images = check_images(get_field(batch, image_key, "images", "image_key", kind="batch"))
        check_finite(images, "images", "fix the dataset or its transform (a NaN pixel makes the mixed "
                      "image and its saliency NaN)")
        labels = get_field(batch, label_key, "labels", "label_key", kind="batch")
        if not isinstance(labels, Tensor):
            raise TypeError(
                f"the labels at label_key={label_key!r} collate to {type(labels).__name__}, not a tensor; "
                "give class indices (int) or (K,) probability tensors, e.g. map names with a dict in the dataset"
            )

        source = self.saliency
        if isinstance(source, str):
            stored = get_field(batch, mask_key, "masks", "mask_key", kind="batch")
            saliency = _mask_batch(stored, mask_key)
        elif isinstance(source, SaliencySource):
            saliency = source.saliency(images, labels)
            if saliency is not None:  # None: flat (salaug.sources.Flat)
                _check_source_output(saliency, images, source)
        else:
            saliency = source(images, labels) if getattr(source, "uses_labels", False) else source(images)
            _check_source_output(saliency, images, source)

        out = self._transform(images, saliency, labels)
        new_images, new_saliency, soft = out[0], out[1], out[2]
        if new_saliency is None and self.return_saliency:  # flat: no map was made, the flat one is ones
            new_saliency = torch.ones_like(new_images[:, :1], dtype=torch.float32)
        if get_worker_info() is not None:
            # default_collate built the batch in shared memory; a fresh tensor would be copied into
            # shared memory again when it is sent to the main process (~20 ms for 64 x 3 x 128 x 128)
            new_images = _reuse_shared(images, new_images)
            if use_mask and self.return_saliency:
                new_saliency = _reuse_shared(stored.view_as(new_saliency) if stored.numel() == new_saliency.numel()
                                             else stored, new_saliency)

        if isinstance(batch, Mapping):
            result = dict(batch)
            result[image_key] = new_images
            result[label_key] = soft
            if use_mask:
                if self.return_saliency:
                    result[mask_key] = new_saliency
                else:
                    del result[mask_key]
            elif self.return_saliency:
                result[MASK_KEY] = new_saliency
            return result
        n = len(batch)
        skip = {field_position(image_key, n), field_position(label_key, n)}
        if use_mask:
            skip.add(field_position(mask_key, n))  # type: ignore[arg-type]
        extras = [batch[i] for i in range(n) if i not in skip]
        tail = [new_saliency] if self.return_saliency else []
        return (new_images, soft, *extras, *tail)
