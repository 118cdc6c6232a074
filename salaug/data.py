"""The DataLoader path: saliency-guided augmentation in a ``collate_fn``, and stored masks.

Three ways to get saliency for a batch inside DataLoader workers (on CPU):

* a **model-free source**, e.g. :class:`salaug.saliency.SpectralResidual` — cheap, batched FFT;
* a **frozen model + CAM**, wrapped by :class:`CAMSaliency` — one forward/backward per batch in
  each worker;
* **stored masks**: :func:`precompute_masks` runs a CAM once over the whole dataset at
  feature-map resolution and writes a compact file (:class:`MaskBank` reads it with
  ``numpy.memmap``); :class:`MaskedDataset` yields every sample with its mask as a
  ``torchvision.tv_tensors.Mask`` so that torchvision v2 geometric transforms move image and mask
  together; ``SaliencyCollate(transform, saliency="mask")`` then uses the transformed masks.

:class:`SaliencyCollate` wraps :func:`torch.utils.data.default_collate` and applies any salaug
transform (``SaliencyMix``, ``SalientCrop``, ...) to the collated batch.

Mask file format (version 1, little endian, no pickle anywhere)::

    offset  size  field
    0       8     magic  b"SALMASK\\x00"
    8       2     format version (uint16) = 1
    10      1     dtype code (uint8): 1 = uint8 (value * 255, rounded), 2 = float16
    11      1     reserved (0)
    12      8     N, number of masks (uint64)
    20      4     h (uint32)
    24      4     w (uint32)
    28      4     L, length of the JSON description in bytes (uint32)
    32      L     JSON description (UTF-8): model, target layer, cam, image size, ...
    ...           zero padding up to the next multiple of 64 bytes (the data offset)
    offset  N*h*w*itemsize   mask data, C order (N, h, w)
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate, get_worker_info

from salaug._checks import check_images

__all__ = [
    "CAMSaliency",
    "MaskBank",
    "MaskedDataset",
    "SaliencyCollate",
    "precompute_main",
    "precompute_masks",
    "read_mask_header",
    "save_masks",
]

MASK_KEY = "saliency"
"""Key under which :class:`MaskedDataset` adds the mask to dict samples."""

_MAGIC = b"SALMASK\x00"
_VERSION = 1
_HEADER = struct.Struct("<8sHBBQIII")  # magic, version, dtype code, reserved, N, h, w, json length
_ALIGN = 64
_DTYPES: dict[int, tuple[str, np.dtype]] = {1: ("uint8", np.dtype("<u1")), 2: ("float16", np.dtype("<f2"))}
_DTYPE_CODES = {name: code for code, (name, _) in _DTYPES.items()}


# ---------------------------------------------------------------------------------------------
# Sample access helpers
# ---------------------------------------------------------------------------------------------
def _describe_key(sample: object, key: object) -> str:
    if isinstance(sample, Mapping):
        return f"key {key!r} (the sample has keys {sorted(map(str, sample.keys()))})"
    return f"position {key!r} (the sample has {len(sample)} fields)"  # type: ignore[arg-type]


def _get(sample: object, key: object, what: str, arg: str) -> Any:
    """``sample[key]`` for a tuple/list/dict sample, with an error that says which argument to fix."""
    if isinstance(sample, Mapping):
        if key not in sample:
            raise KeyError(f"the {what} is not at {_describe_key(sample, key)}; pass {arg}=<its key>")
        return sample[key]
    if isinstance(sample, (tuple, list)):
        if not isinstance(key, int):
            raise TypeError(f"{arg} must be an int position for tuple/list samples, got {key!r}")
        if not -len(sample) <= key < len(sample):
            raise IndexError(f"the {what} is not at {_describe_key(sample, key)}; pass {arg}=<its position>")
        return sample[key]
    raise TypeError(
        f"samples must be tuples, lists or dicts (e.g. (image, label)), got {type(sample).__name__}"
    )


def _position(key: int, n: int) -> int:
    return key % n if isinstance(key, int) else key  # type: ignore[return-value]


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


# ---------------------------------------------------------------------------------------------
# The mask file
# ---------------------------------------------------------------------------------------------
def _header_bytes(n: int, h: int, w: int, dtype: str, description: dict) -> bytes:
    text = json.dumps(description, sort_keys=True).encode("utf-8")
    head = _HEADER.pack(_MAGIC, _VERSION, _DTYPE_CODES[dtype], 0, n, h, w, len(text)) + text
    pad = (-len(head)) % _ALIGN
    return head + b"\x00" * pad


def read_mask_header(path: str | os.PathLike) -> dict:
    """Read and validate the header of a mask file (no mask data is read).

    Returns:
        ``{"n", "h", "w", "dtype", "version", "offset", "description"}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a salaug mask file or is corrupt or truncated; the message
            names the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {str(path)!r} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
        if len(raw) < _HEADER.size:
            raise ValueError(
                f"mask file {str(path)!r} is truncated: {size} bytes, shorter than the {_HEADER.size}-byte header"
            )
        magic, version, code, _, n, h, w, text_len = _HEADER.unpack(raw)
        if magic != _MAGIC:
            raise ValueError(
                f"mask file {str(path)!r} is not a salaug mask file: bad magic bytes {magic!r} "
                f"(expected {_MAGIC!r}); write it with salaug.data.precompute_masks"
            )
        if version != _VERSION:
            raise ValueError(
                f"mask file {str(path)!r} has format version {version}; this salaug reads version {_VERSION}"
            )
        if code not in _DTYPES:
            raise ValueError(f"mask file {str(path)!r} has an unknown dtype code {code} (corrupt header)")
        if n < 1 or h < 1 or w < 1:
            raise ValueError(
                f"mask file {str(path)!r} has a wrong shape in its header: N={n}, h={h}, w={w} (all must be >= 1)"
            )
        text = f.read(text_len)
        if len(text) < text_len:
            raise ValueError(
                f"mask file {str(path)!r} is truncated inside its JSON description "
                f"({len(text)} of {text_len} bytes)"
            )
        try:
            description = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"mask file {str(path)!r} has a corrupt JSON description: {exc}") from None
    name, dtype = _DTYPES[code]
    offset = _HEADER.size + text_len
    offset += (-offset) % _ALIGN
    expected = offset + n * h * w * dtype.itemsize
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        raise ValueError(
            f"mask file {str(path)!r} is {what}: its header declares {n} masks of {h}x{w} {name} "
            f"({expected} bytes in all) but the file has {size} bytes"
        )
    return {"n": n, "h": h, "w": w, "dtype": name, "version": version, "offset": offset,
            "description": description}


class MaskBank(Sequence):
    """Read-only access to a mask file written by :func:`precompute_masks`.

    The data is mapped with ``numpy.memmap`` (opened lazily in each process, so the bank pickles
    as its path and is cheap to send to DataLoader workers). The header is validated against the
    file size on opening.

    Args:
        path: the mask file.
        length: if given, the number of masks the file must hold (e.g. ``len(dataset)``).
        mask_size: if given, the ``(h, w)`` the masks must have.

    Attributes:
        description: the JSON description (model, target layer, cam, image size, ...).
        mask_size: ``(h, w)``. dtype: ``"uint8"`` or ``"float16"``.

    Shape:
        ``bank[i]`` is ``(1, h, w)`` float32 in ``[0, 1]``; ``bank.get(indices)`` is
        ``(B, 1, h, w)``.

    Raises:
        FileNotFoundError, ValueError: a missing, corrupt, truncated or mismatched file (the
            message names the file and the problem).
    """

    def __init__(self, path: str | os.PathLike, *, length: int | None = None,
                 mask_size: tuple[int, int] | None = None) -> None:
        self.path = str(path)
        header = read_mask_header(self.path)
        self._n, self._h, self._w = header["n"], header["h"], header["w"]
        self.dtype: str = header["dtype"]
        self._offset: int = header["offset"]
        self.description: dict = header["description"]
        if length is not None and length != self._n:
            raise ValueError(
                f"mask file {self.path!r} holds {self._n} masks but the dataset has {length} samples; "
                "recompute the masks for this dataset (salaug precompute-masks)"
            )
        if mask_size is not None and tuple(mask_size) != (self._h, self._w):
            raise ValueError(
                f"mask file {self.path!r} holds {self._h}x{self._w} masks but {mask_size[0]}x{mask_size[1]} "
                "were expected"
            )
        self._array: np.ndarray | None = None

    @property
    def mask_size(self) -> tuple[int, int]:
        return self._h, self._w

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # a memmap would pickle its whole data
        return state

    @property
    def array(self) -> np.ndarray:
        """The raw ``(N, h, w)`` memory map (uint8 or float16)."""
        if self._array is None:
            self._array = np.memmap(self.path, dtype=_DTYPES[_DTYPE_CODES[self.dtype]][1], mode="r",
                                    offset=self._offset, shape=(self._n, self._h, self._w))
        return self._array

    def __len__(self) -> int:
        return self._n

    def _to_float(self, raw: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.array(raw, dtype=np.float32))
        if self.dtype == "uint8":
            return t.mul_(1.0 / 255.0)
        return t.nan_to_num_(0.0).clamp_(0.0, 1.0)

    def __getitem__(self, index: int) -> Tensor:  # type: ignore[override]
        if not isinstance(index, (int, np.integer)) and not (isinstance(index, Tensor) and index.ndim == 0):
            raise TypeError(f"MaskBank indices must be integers, got {type(index).__name__}; use .get() for batches")
        i = int(index)
        if not -self._n <= i < self._n:
            raise IndexError(f"mask index {i} out of range for {self._n} masks in {self.path!r}")
        return self._to_float(self.array[i]).unsqueeze(0)

    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Masks of several samples, ``(B, 1, h, w)`` float32 in ``[0, 1]``."""
        idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices, dtype=np.int64)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"mask indices out of range for {self._n} masks in {self.path!r}")
        return self._to_float(self.array[idx]).unsqueeze(1)

    def __repr__(self) -> str:
        return f"MaskBank({self.path!r}, n={self._n}, mask_size={self.mask_size}, dtype={self.dtype!r})"


def _encode(maps: Tensor, dtype: str) -> bytes:
    """``(N, h, w)`` float in ``[0, 1]`` -> raw little-endian bytes of the file's dtype."""
    data = maps.detach().float().cpu().nan_to_num(0.0).clamp_(0.0, 1.0).numpy()
    if dtype == "uint8":
        data = np.rint(data * 255.0)
    return np.ascontiguousarray(data.astype(_DTYPES[_DTYPE_CODES[dtype]][1])).tobytes()


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_masks(path: str | os.PathLike, masks: Tensor, *, dtype: Literal["uint8", "float16"] = "uint8",
               description: dict | None = None) -> Path:
    """Write masks you already have (e.g. from another saliency method) as a mask file.

    Args:
        path: output file (written atomically).
        masks: ``(N, 1, h, w)`` or ``(N, h, w)`` float in ``[0, 1]`` (values are clamped).
        dtype: ``"uint8"`` or ``"float16"``.
        description: JSON-serialisable dict stored in the header.

    Returns:
        ``Path(path)``.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "m.salm")
        >>> _ = save_masks(f, torch.tensor([[[0.0, 0.5], [1.0, 0.25]]]))
        >>> bank = MaskBank(f)
        >>> len(bank), bank.mask_size, [round(v, 2) for v in bank[0].flatten().tolist()]
        (1, (2, 2), [0.0, 0.5, 1.0, 0.25])
    """
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"dtype must be 'uint8' or 'float16', got {dtype!r}")
    if not isinstance(masks, Tensor) or not masks.is_floating_point():
        raise TypeError("masks must be a floating-point tensor (N, 1, h, w) or (N, h, w) in [0, 1]")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or min(masks.shape) < 1:
        raise ValueError(f"masks must have shape (N, 1, h, w) or (N, h, w), got {tuple(masks.shape)}")
    n, h, w = masks.shape
    desc = {"mask_size": [h, w], "num_samples": n, "dtype": dtype, **(description or {})}
    path = Path(path)
    _atomic_write(path, lambda f: (f.write(_header_bytes(n, h, w, dtype, desc)), f.write(_encode(masks, dtype))))
    return path


def _layer_name(model: nn.Module, layer: Any, cam: Any) -> str:
    if isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return name
        return type(layer).__name__
    resolved = getattr(cam, "target_layer_name", None)
    return f"auto:{resolved}" if isinstance(resolved, str) else "auto"


def _image_tensor(image: Any, where: str) -> Tensor:
    if isinstance(image, Tensor):
        image = image.as_subclass(Tensor)
        if not image.is_floating_point():
            image = image.float() / 255.0
        return image
    raise TypeError(
        f"{where}: images must be (C, H, W) tensors, got {type(image).__name__}; give the dataset a "
        "transform such as torchvision.transforms.v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, "
        "scale=True)])"
    )


def precompute_masks(model: nn.Module, dataset: Dataset, path: str | os.PathLike, *, cam: Any = "gradcam",
                     target_layer: Any = None, batch_size: int = 64,
                     dtype: Literal["uint8", "float16"] = "uint8",
                     device: str | torch.device | None = None, num_workers: int = 0,
                     image_key: int | str = 0, label_key: int | str | None = 1,
                     targets: Literal["label", "predicted"] = "label",
                     description: dict | None = None) -> Path:
    """Run a CAM over a whole dataset at feature-map resolution and store the masks compactly.

    The model runs in eval mode (its modes are restored afterwards) on ``device``. Each mask is
    the CAM at the target layer's resolution ``(h, w)``, min-max normalised to ``[0, 1]``, stored
    as ``uint8`` (``round(255 * x)``, 1 byte per cell) or ``float16``. The file is written to a
    temporary name next to ``path`` and renamed when complete, so a crash leaves no partial file.
    See the module docstring for the format; read it back with :class:`MaskBank`.

    Every image must have the same size (the feature maps must agree): resize them in the
    dataset's transform. A full-image resize (no crop) keeps the mask aligned with the original
    image, which :class:`MaskedDataset` relies on when it upsamples the mask to the image's size.

    Args:
        model: classifier ``(B, C, H, W) -> (B, K)``.
        dataset: map-style dataset of tuple/list/dict samples with a ``(C, H, W)`` tensor image.
        path: output file.
        cam: CAM name or class for :func:`salaug.cam.create_cam`.
        target_layer: dotted name or module; ``None`` picks the last conv layer.
        batch_size, num_workers: of the DataLoader that reads the dataset (in order).
        dtype: ``"uint8"`` (default, 1 byte per cell) or ``"float16"``.
        device: where the model runs (default: the model's device).
        image_key, label_key: where the image and the label are in a sample.
        targets: ``"label"`` (CAM of the true class; needs ``label_key``) or ``"predicted"``.
        description: extra JSON-serialisable entries stored in the header's description.

    Returns:
        ``Path(path)``.

    Raises:
        TypeError, ValueError: bad arguments, non-tensor images, or images of different sizes.
    """
    from salaug.cam import create_cam

    if dtype not in _DTYPE_CODES:
        raise ValueError(f"dtype must be 'uint8' or 'float16', got {dtype!r}")
    if targets not in ("label", "predicted"):
        raise ValueError(f"targets must be 'label' or 'predicted', got {targets!r}")
    if targets == "label" and label_key is None:
        raise ValueError("targets='label' needs label_key; pass targets='predicted' for unlabelled data")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the dataset is empty: nothing to precompute")
    path = Path(path)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)

    def collate(samples: list) -> tuple[Tensor, Tensor | None]:
        images = [_image_tensor(_get(s, image_key, "image", "image_key"), "precompute_masks") for s in samples]
        sizes = sorted({tuple(im.shape) for im in images})
        if len(sizes) > 1:
            raise ValueError(
                f"precompute_masks needs images of one size, got {sizes[:4]}; resize them in the dataset's "
                "transform (a full resize, e.g. v2.Resize((224, 224)), keeps the masks aligned)"
            )
        labels = None
        if targets == "label":
            labels = torch.as_tensor([int(_get(s, label_key, "label", "label_key")) for s in samples])
        return torch.stack(images), labels

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=collate)
    cam_obj = create_cam(cam, model, target_layer=target_layer)
    cam_label = cam if isinstance(cam, str) else getattr(cam, "__name__", type(cam).__name__)

    def write(f) -> None:
        written = 0
        shape: tuple[int, int] | None = None
        image_size: tuple[int, int] | None = None
        for images, labels in loader:
            x = images.to(device)
            t = labels.to(device) if labels is not None else None
            maps = cam_obj(x, targets=t, output_size="feature")
            if maps.ndim == 3:
                maps = maps.unsqueeze(1)
            if shape is None:
                shape = (int(maps.shape[-2]), int(maps.shape[-1]))
                image_size = (int(images.shape[-2]), int(images.shape[-1]))
                desc = {
                    "model": type(model).__name__,
                    "target_layer": _layer_name(model, target_layer, cam_obj),
                    "cam": cam_label,
                    "image_size": list(image_size),
                    "mask_size": list(shape),
                    "targets": targets,
                    "dataset": type(dataset).__name__,
                    "num_samples": n,
                    "dtype": dtype,
                    **(description or {}),
                }
                f.write(_header_bytes(n, shape[0], shape[1], dtype, desc))
            elif tuple(maps.shape[-2:]) != shape or tuple(images.shape[-2:]) != image_size:
                raise ValueError(
                    f"precompute_masks needs images of one size: got {tuple(images.shape[-2:])} after "
                    f"{image_size}; resize them in the dataset's transform"
                )
            f.write(_encode(maps[:, 0], dtype))
            written += maps.shape[0]
        if written != n:
            raise ValueError(f"the dataset yielded {written} samples but has length {n}")

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        _atomic_write(path, write)
    finally:
        for m, training in modes:
            m.training = training
    return path


class MaskedDataset(Dataset):
    """Wrap a dataset so each sample carries its stored saliency mask, ready for v2 transforms.

    ``dataset[i]`` ``(image, label, *rest)`` becomes ``(Image, label, *rest, Mask)``; a dict
    sample gets the mask under ``mask_key`` (default ``"saliency"``). The image is wrapped as a
    ``torchvision.tv_tensors.Image`` and the mask, read from the :class:`MaskBank` at feature-map
    resolution, is **upsampled bilinearly to the image's size here** and wrapped as a float32
    ``tv_tensors.Mask`` ``(1, H, W)`` in ``[0, 1]``. Then ``transforms`` (torchvision v2) is applied
    to the whole sample, so geometric transforms (``RandomResizedCrop``, ``RandomHorizontalFlip``,
    ``RandomAffine``, ...) move image and mask together; colour transforms leave the mask alone.

    Why upsample before the transforms: v2 transforms sample one set of parameters from the image's
    size and refuse inputs of different sizes, so a low-resolution mask cannot be cropped
    consistently. Note that v2 resamples a ``Mask`` with **nearest** interpolation (it assumes label
    maps) and keeps its float dtype; because the mask is already smooth at image resolution, nearest
    resampling of it differs from bilinear by at most one image pixel's shift — fine for saliency.
    Values stay in ``[0, 1]``; areas padded by a transform (rotation, affine) get the fill value 0.

    Plain tensors in the sample other than the image (e.g. a ``(4,)`` box) are passed through
    untransformed by v2; wrap boxes as ``tv_tensors.BoundingBoxes`` in your dataset if they must
    move too.

    Args:
        dataset: map-style dataset of tuple/list/dict samples; images ``(C, H, W)`` tensors or PIL.
        path: the mask file (or an open :class:`MaskBank`); it must hold ``len(dataset)`` masks.
        transforms: a torchvision v2 transform applied to the whole sample.
        image_key: position/key of the image.
        mask_key: key of the mask in dict samples (ignored for tuples, where it is appended).

    Raises:
        ValueError: the mask file does not match the dataset (the message names the file).
    """

    def __init__(self, dataset: Dataset, path: str | os.PathLike | MaskBank,
                 transforms: Callable | None = None, *, image_key: int | str = 0,
                 mask_key: str = MASK_KEY) -> None:
        self.dataset = dataset
        n = len(dataset)  # type: ignore[arg-type]
        if isinstance(path, MaskBank):
            if len(path) != n:
                raise ValueError(
                    f"mask file {path.path!r} holds {len(path)} masks but the dataset has {n} samples; "
                    "recompute the masks for this dataset (salaug precompute-masks)"
                )
            self.bank = path
        else:
            self.bank = MaskBank(path, length=n)
        self.transforms = transforms
        self.image_key = image_key
        self.mask_key = mask_key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        return self._wrap(self.dataset[index], self.bank[index])

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Several samples at once: uses the wrapped dataset's ``__getitems__`` when it has one
        (batched rendering) and reads the masks in one memmap gather."""
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(list(indices)) if getitems is not None else [self.dataset[i] for i in indices]
        masks = self.bank.get(list(indices))
        return [self._wrap(sample, mask) for sample, mask in zip(samples, masks)]

    def _wrap(self, sample: Any, mask: Tensor):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        image = _get(sample, self.image_key, "image", "image_key")
        if isinstance(image, Tensor):
            image = tv_tensors.Image(image)
        else:
            image = TF.to_image(image)  # PIL / numpy
        height, width = image.shape[-2:]
        if tuple(mask.shape[-2:]) != (height, width):
            mask = F.interpolate(mask[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            mask = mask.clamp_(0.0, 1.0)
        mask = tv_tensors.Mask(mask)
        if isinstance(sample, Mapping):
            out: Any = dict(sample)
            out[self.image_key] = image
            out[self.mask_key] = mask
        elif isinstance(sample, (tuple, list)):
            fields = list(sample)
            fields[self.image_key] = image  # type: ignore[index]
            out = (*fields, mask)
        else:
            raise TypeError(f"samples must be tuples, lists or dicts, got {type(sample).__name__}")
        if self.transforms is not None:
            out = self.transforms(out)
        return out


# ---------------------------------------------------------------------------------------------
# Command line: salaug precompute-masks
# ---------------------------------------------------------------------------------------------
def _load_state_dict(model: nn.Module, weights: str) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"--weights {weights!r} does not hold a state_dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state)
        return
    except RuntimeError as first:
        # a Lightning checkpoint stores the network under a prefix such as "model."
        own = set(model.state_dict())
        for prefix in sorted({k.split(".", 1)[0] + "." for k in state if "." in k}):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if set(stripped) == own:
                model.load_state_dict(stripped)
                return
        raise ValueError(f"--weights {weights!r} does not match the architecture: {first}") from None


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salaug precompute-masks",
        description="Run a CAM over a dataset at feature-map resolution and store the masks in a compact "
                    "file for MaskedDataset / SaliencyCollate(saliency='mask'). Nothing is downloaded.",
    )
    p.add_argument("root", nargs="?", help="image folder (torchvision ImageFolder layout: root/class/img.png)")
    p.add_argument("--dataset", choices=("folder", "cluttered"), default="folder",
                   help="'folder' (ImageFolder at ROOT) or 'cluttered' (the embedded ClutteredObjects)")
    p.add_argument("--split", default="train", help="ClutteredObjects split (default: train)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize every image to SIZE x SIZE (full resize, no crop; needed for folders of "
                        "mixed sizes; ClutteredObjects: its image size, default 64)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--arch", required=True, help="torchvision architecture name, e.g. resnet18")
    p.add_argument("--weights", default=None,
                   help="local state_dict file (torch.save(model.state_dict())); without it the model has "
                        "random weights (only useful for testing)")
    p.add_argument("--num-classes", type=int, required=True, help="number of classes of the model")
    p.add_argument("--layer", default=None, help="target layer, dotted name (default: the last conv layer)")
    p.add_argument("--cam", default="gradcam", help="CAM method (default: gradcam)")
    p.add_argument("--targets", choices=("label", "predicted"), default="label",
                   help="CAM of the true label (default) or of the predicted class")
    p.add_argument("--normalize", choices=("none", "imagenet"), default="none",
                   help="input normalisation the model was trained with (default: none, images in [0, 1])")
    p.add_argument("--out", required=True, help="output mask file")
    p.add_argument("--dtype", choices=("uint8", "float16"), default="uint8")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    return p


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def precompute_main(argv: list[str] | None = None) -> int:
    """Command-line entry ``salaug precompute-masks`` (see ``--help``). Returns the exit code.

    Example (shell)::

        salaug precompute-masks data/train --image-size 224 --arch resnet50 \\
            --weights resnet50_mine.pt --num-classes 10 --layer layer4 --out train_masks.salm
    """
    args = _build_parser().parse_args(argv)
    try:
        import torchvision
        from torchvision.transforms import v2

        if args.dataset == "folder":
            if not args.root:
                raise ValueError("give the image folder ROOT (or --dataset cluttered)")
            steps: list = [v2.ToImage()]
            if args.image_size:
                steps.append(v2.Resize((args.image_size, args.image_size), antialias=True))
            steps.append(v2.ToDtype(torch.float32, scale=True))
            dataset: Dataset = torchvision.datasets.ImageFolder(args.root, transform=v2.Compose(steps))
        else:
            from salaug.datasets import ClutteredObjects

            kwargs = {"split": args.split, "num_classes": args.num_classes}
            if args.image_size:
                kwargs["size"] = args.image_size
            if args.limit is not None:
                kwargs["length"] = args.limit
            dataset = ClutteredObjects(**kwargs)
        if args.limit is not None and args.dataset == "folder":
            dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
        if args.arch not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision architecture {args.arch!r}")
        model = torchvision.models.get_model(args.arch, weights=None, num_classes=args.num_classes)
        if args.weights:
            _load_state_dict(model, args.weights)
        else:
            warnings.warn("no --weights given: the CAMs come from a randomly initialised model", stacklevel=1)
        layer = args.layer
        if args.normalize == "imagenet":
            model = _Normalized(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            layer = f"model.{layer}" if layer else None
        if layer is not None and layer not in dict(model.named_modules()):
            raise ValueError(f"--layer {args.layer!r} is not a module of {args.arch}")
        out = precompute_masks(
            model, dataset, args.out, cam=args.cam, target_layer=layer, batch_size=args.batch_size,
            dtype=args.dtype, device=args.device, num_workers=args.num_workers, targets=args.targets,
            description={"arch": args.arch, "weights": os.path.basename(args.weights) if args.weights else None,
                         "normalize": args.normalize, "source": args.dataset,
                         **({"split": args.split} if args.dataset == "cluttered" else {})},
        )
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as exc:
        print(f"salaug precompute-masks: error: {exc}", file=sys.stderr)
        return 2
    bank = MaskBank(out)
    h, w = bank.mask_size
    print(f"wrote {len(bank)} masks of {h}x{w} ({bank.dtype}) to {out} "
          f"({os.path.getsize(out) / 1024:.1f} KiB)")
    return 0
