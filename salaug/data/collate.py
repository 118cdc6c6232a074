"""SaliencyCollate: saliency-guided augmentation as a DataLoader ``collate_fn``; CAMSaliency."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import default_collate, get_worker_info

from salaug._checks import check_images
from salaug.data._access import _get, _position
from salaug.data.masks import MASK_KEY

# ---------------------------------------------------------------------------------------------
# Saliency from a frozen model
# ---------------------------------------------------------------------------------------------
class CAMSaliency:
    """A saliency source from a frozen model and a CAM, for :class:`SaliencyCollate`.

    Calling it runs the CAM on ``device`` with every submodule in eval mode (BatchNorm uses its
    running statistics, dropout is off) and restores each submodule's train/eval mode afterwards.
    The model is not trained: it is a snapshot that each DataLoader worker copies when it starts
    (with the default ``fork`` start method, workers see the weights as they were when the
    iterator was created).

    The CAM object is rebuilt in each process (it is not pickled), so the source can be sent to
    DataLoader workers. With a CUDA ``device``, use ``num_workers=0`` or a DataLoader with
    ``multiprocessing_context="spawn"`` (CUDA cannot be used in forked workers).

    Args:
        model: a classifier ``(B, C, H, W) -> (B, K)`` logits.
        cam: a CAM name for :func:`salaug.cam.create_cam` (``"gradcam"``, ...) or a CAM class.
        target_layer: dotted name or module of the target layer; ``None`` picks the last conv.
        device: where the model and CAM run (default: the model's device). Maps are returned on
            the images' device.
        targets: ``"predicted"`` (CAM of the predicted class) or ``"label"`` (CAM of the batch's
            labels, passed by :class:`SaliencyCollate`).
        output_size: ``None`` (the images' size) or ``"feature"`` (feature-map resolution; the
            transforms resize it bilinearly, which saves work).

    Shape:
        - images: ``(B, C, H, W)`` float; labels (optional) ``(B,)`` or ``(B, K)``.
        - output: ``(B, 1, H, W)`` (or ``(B, 1, h, w)`` for ``"feature"``) float32 in ``[0, 1]``.
    """

    uses_labels: bool

    def __init__(self, model: nn.Module, cam: Any = "gradcam", target_layer: Any = None,
                 device: str | torch.device | None = None, *,
                 targets: Literal["predicted", "label"] = "predicted",
                 output_size: Literal["feature"] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if targets not in ("predicted", "label"):
            raise ValueError(f"targets must be 'predicted' or 'label', got {targets!r}")
        if output_size not in (None, "feature"):
            raise ValueError(f"output_size must be None (image size) or 'feature', got {output_size!r}")
        self.model = model
        self.cam_name = cam
        self.target_layer = target_layer
        self.device = torch.device(device) if device is not None else None
        self.targets = targets
        self.uses_labels = targets == "label"
        self.output_size = output_size
        self._cam = None
        self._get_cam()  # fail early on an unknown CAM name or target layer

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cam"] = None  # hooks / closures are rebuilt lazily in each process
        return state

    def _get_cam(self):
        if self._cam is None:
            from salaug.cam import create_cam

            device = self.device
            if device is not None:
                self.model.to(device)
            self._cam = create_cam(self.cam_name, self.model, target_layer=self.target_layer)
        return self._cam

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        images = check_images(images)
        cam = self._get_cam()
        device = self.device
        if device is None:
            param = next(self.model.parameters(), None)
            device = param.device if param is not None else images.device
        x = images.to(device)
        targets = labels.to(device) if (self.uses_labels and labels is not None) else None
        size = "feature" if self.output_size == "feature" else tuple(images.shape[-2:])
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            maps = cam(x, targets=targets, output_size=size)
        finally:
            for m, training in modes:
                m.training = training
        return maps.detach().to(device=images.device, dtype=torch.float32)

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
    ``seed=None`` the transform's own ``generator`` (or the global RNG) is used. The transform's
    ``generator`` attribute is swapped only for the duration of a call.

    The object is picklable (DataLoader workers with any start method).

    Args:
        transform: a :class:`salaug.transforms.SaliencyTransform` (or any callable with its
            signature ``t(images, saliency, labels, num_classes=...) -> SalientBatch``).
        saliency: a source ``source(images) -> (B, 1, H, W)`` in ``[0, 1]``
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

    def __init__(self, transform: Callable, saliency: Callable[[Tensor], Tensor] | Literal["mask"], *,
                 image_key: int | str = 0, label_key: int | str = 1, mask_key: int | str | None = None,
                 num_classes: int | None = None, seed: int | None = None,
                 return_saliency: bool = False) -> None:
        if not callable(transform):
            raise TypeError(f"transform must be a salaug transform (callable), got {type(transform).__name__}")
        if isinstance(saliency, str):
            if saliency != "mask":
                raise ValueError(
                    f"saliency must be a callable source (e.g. SpectralResidual(), CAMSaliency(model)) "
                    f"or 'mask', got {saliency!r}"
                )
        elif not callable(saliency):
            raise TypeError(
                "saliency must be a callable source images -> (B, 1, H, W) (e.g. SpectralResidual(), "
                f"CAMSaliency(model)) or 'mask', got {type(saliency).__name__}"
            )
        if image_key == label_key:
            raise ValueError(f"image_key and label_key must differ, both are {image_key!r}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.transform = transform
        self.saliency = saliency
        self.image_key = image_key
        self.label_key = label_key
        self.mask_key = mask_key
        self.num_classes = num_classes
        self.seed = seed
        self.return_saliency = return_saliency
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

    def __call__(self, samples: Sequence) -> tuple | dict:
        """Collate ``samples`` (a list of tuple/list/dict samples) and transform the batch."""
        if not isinstance(samples, Sequence) or len(samples) == 0:
            raise ValueError("SaliencyCollate needs a non-empty list of samples")
        first = samples[0]
        image_key, label_key = self.image_key, self.label_key
        _get(first, image_key, "image", "image_key")
        _get(first, label_key, "label", "label_key")
        use_mask = isinstance(self.saliency, str)
        mask_key = self._mask_key(first) if use_mask else None
        if use_mask:
            _get(first, mask_key, "mask (saliency='mask')", "mask_key")
            if isinstance(first, (tuple, list)) and _position(mask_key, len(first)) in {  # type: ignore[arg-type]
                    _position(image_key, len(first)), _position(label_key, len(first))}:  # type: ignore[arg-type]
                raise ValueError(
                    f"saliency='mask' but the samples have only {len(first)} fields and mask_key={mask_key!r} "
                    "points at the image or the label; wrap the dataset with MaskedDataset (which appends "
                    "the mask) or pass mask_key=<position of the mask>"
                )

        batch = default_collate(samples)
        images = check_images(_get(batch, image_key, "image", "image_key"))
        labels = _get(batch, label_key, "label", "label_key")

        if use_mask:
            saliency = stored = _get(batch, mask_key, "mask", "mask_key")
            if not isinstance(saliency, Tensor):
                raise TypeError(f"the mask must be a tensor (1, h, w) per sample, got {type(saliency).__name__}")
            saliency = saliency.to(torch.float32)
            if saliency.ndim == 3:
                saliency = saliency.unsqueeze(1)
        elif getattr(self.saliency, "uses_labels", False):
            saliency = self.saliency(images, labels)
        else:
            saliency = self.saliency(images)

        generator = self.stream()
        swap = generator is not None and hasattr(self.transform, "generator")
        if swap:
            saved = self.transform.generator
            self.transform.generator = generator
        try:
            with torch.no_grad():
                out = self.transform(images, saliency, labels, num_classes=self.num_classes)
        finally:
            if swap:
                self.transform.generator = saved
        new_images, new_saliency, soft = out[0], out[1], out[2]
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
        skip = {_position(image_key, n), _position(label_key, n)}  # type: ignore[arg-type]
        if use_mask:
            skip.add(_position(mask_key, n))  # type: ignore[arg-type]
        extras = [batch[i] for i in range(n) if i not in skip]
        tail = [new_saliency] if self.return_saliency else []
        return (new_images, soft, *extras, *tail)
