"""Stored CAM masks: precomputation, a compact pickle-free file, MaskBank and MaskedDataset.

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

import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from salaug._batch import get_field
from salaug._checks import (
    check_choice,
    check_int,
    check_key,
    check_targets,
    resolve_index,
)
from salaug.cam.base import model_device, model_on
from salaug.data._paths import as_path, check_output_file, new_file_mode

MASK_KEY = "saliency"
"""Key under which :class:`MaskedDataset` adds the mask to dict samples."""

_MAGIC = b"SALMASK\x00"
_VERSION = 1
_HEADER = struct.Struct("<8sHBBQIII")  # magic, version, dtype code, reserved, N, h, w, json length
_ALIGN = 64
_DTYPES: dict[int, tuple[str, np.dtype]] = {1: ("uint8", np.dtype("<u1")), 2: ("float16", np.dtype("<f2"))}
_DTYPE_CODES = {name: code for code, (name, _) in _DTYPES.items()}


# ---------------------------------------------------------------------------------------------
# The mask file
# ---------------------------------------------------------------------------------------------
def _header_bytes(n: int, h: int, w: int, dtype: str, description: dict) -> bytes:
    text = json.dumps(description, sort_keys=True).encode("utf-8")
    head = _HEADER.pack(_MAGIC, _VERSION, _DTYPE_CODES[dtype], 0, n, h, w, len(text)) + text
    pad = (-len(head)) % _ALIGN
    return head + b"\x00" * pad


_FORMATS = (
    (b"PK\x03\x04", "a zip archive, e.g. a torch.save checkpoint"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x80", "a Python pickle, e.g. an old torch.save file"),
    (b"\x89HDF", "an HDF5 file"),
)


def _guess_format(raw: bytes) -> str:
    for magic, name in _FORMATS:
        if raw.startswith(magic):
            return f"it looks like {name}"
    return "unknown format"


def _mask_file(path: object) -> Path:
    """Check that ``path`` names an existing regular file, saying what it is otherwise."""
    p = as_path(path, "the mask file")
    if p.is_dir():
        found = sorted(str(q) for q in p.glob("*.salm"))[:3]
        hint = f"; it holds {', '.join(map(repr, found))}" if found else ""
        raise IsADirectoryError(
            f"mask file {str(p)!r} is a directory, not a mask file; pass the file written by "
            f"precompute_masks / salaug precompute-masks{hint}"
        )
    if not p.exists():
        raise FileNotFoundError(
            f"mask file {str(p)!r} does not exist; write it first with salaug.data.precompute_masks "
            "(or the salaug precompute-masks command)"
        )
    if not p.is_file():
        raise ValueError(f"mask file {str(p)!r} is not a regular file (a device, pipe or socket)")
    return p


def read_mask_header(path: str | os.PathLike) -> dict:
    """Read and validate the header of a mask file (no mask data is read).

    Returns:
        ``{"n", "h", "w", "dtype", "version", "offset", "description"}``.

    Raises:
        TypeError: ``path`` is not a path (e.g. ``None``).
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a directory.
        ValueError: the file is not a salaug mask file (the message guesses its format), or is
            empty, corrupt or truncated; the message names the file and what is wrong.
    """
    path = _mask_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
        if size == 0:
            raise ValueError(f"mask file {str(path)!r} is empty (0 bytes); write it again with precompute_masks")
        if not _MAGIC.startswith(raw[: len(_MAGIC)]):  # a short file must at least begin like one
            raise ValueError(
                f"mask file {str(path)!r} is not a salaug mask file ({_guess_format(raw)}: its first bytes are "
                f"{raw[:8]!r}, expected {_MAGIC!r}); write the masks with salaug.data.precompute_masks "
                "(or save_masks for maps you already have)"
            )
        if len(raw) < _HEADER.size:
            raise ValueError(
                f"mask file {str(path)!r} is truncated: {size} bytes, shorter than the {_HEADER.size}-byte header"
            )
        _magic, version, code, _, n, h, w, text_len = _HEADER.unpack(raw)
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
        if not isinstance(description, dict):
            raise ValueError(
                f"mask file {str(path)!r} has a corrupt description: a JSON {type(description).__name__}, "
                "not an object"
            )
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
        self.path = str(_mask_file(path))
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
            # opened lazily, maybe in a DataLoader worker long after __init__: the file may have changed
            expected = self._offset + self._n * self._h * self._w * _DTYPES[_DTYPE_CODES[self.dtype]][1].itemsize
            try:
                size = os.path.getsize(self.path)
            except OSError:
                raise FileNotFoundError(
                    f"mask file {self.path!r} was removed after the MaskBank was opened; write it again"
                ) from None
            if size != expected:
                raise ValueError(
                    f"mask file {self.path!r} changed after the MaskBank was opened ({size} bytes, {expected} "
                    "expected); open a new MaskBank / MaskedDataset on it"
                )
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
        i = resolve_index(index, self._n, f"the {self._n} masks in {self.path!r}", "; use .get() for batches")
        return self._to_float(self.array[i]).unsqueeze(0)

    def get(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Masks of several samples, ``(B, 1, h, w)`` float32 in ``[0, 1]``.

        Raises:
            TypeError: ``indices`` is not a 1-D sequence of integers (floats and bools are refused:
                they would be truncated or read as positions).
            IndexError: an index is out of range.
        """
        idx = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices)
        if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
            raise TypeError(
                f"MaskBank.get needs a 1-D sequence of integer indices, got {idx.dtype} of shape {idx.shape}"
            )
        idx = idx.astype(np.int64)
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


def _atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    """Write through a temporary file renamed over ``path``; the file gets the mode a plain
    ``open(path, "wb")`` would give it (the umask; an existing file keeps its mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)  # mkstemp creates 0o600, which the rename would keep
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
        masks: ``(N, 1, h, w)`` or ``(N, h, w)`` float in ``[0, 1]`` (finite values outside are
            clamped; NaN and inf are refused).
        dtype: ``"uint8"`` or ``"float16"``.
        description: JSON-serialisable dict stored in the header (its ``mask_size``,
            ``num_samples`` and ``dtype`` entries are always the file's own).

    Returns:
        ``Path(path)``.

    Raises:
        TypeError: ``masks`` is not a floating-point tensor, ``description`` not a JSON dict.
        ValueError: a bad shape or dtype name, or NaN / inf in ``masks``.
        IsADirectoryError, NotADirectoryError, PermissionError: ``path`` cannot be written (checked
            before anything is written).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     f = save_masks(os.path.join(folder, "m.salm"), torch.tensor([[[0.0, 0.5], [1.0, 0.25]]]))
        ...     bank = MaskBank(f)
        ...     print(len(bank), bank.mask_size, [round(v, 2) for v in bank[0].flatten().tolist()])
        1 (2, 2) [0.0, 0.5, 1.0, 0.25]
    """
    check_choice("dtype", dtype, tuple(_DTYPE_CODES))
    if not isinstance(masks, Tensor) or not masks.is_floating_point():
        raise TypeError("masks must be a floating-point tensor (N, 1, h, w) or (N, h, w) in [0, 1]")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or min(masks.shape) < 1:
        raise ValueError(f"masks must have shape (N, 1, h, w) or (N, h, w), got {tuple(masks.shape)}")
    if not bool(torch.isfinite(masks).all()):  # stored data, checked once: a sync is fine here
        raise ValueError(
            "masks contain NaN or inf; replace them first, e.g. torch.nan_to_num(masks, nan=0.0, posinf=1.0, "
            "neginf=0.0), or normalise with salaug.normalize_saliency"
        )
    n, h, w = masks.shape
    desc = {**_check_description(description), "mask_size": [h, w], "num_samples": n, "dtype": dtype}
    path = check_output_file(path, "mask file")
    _atomic_write(path, lambda f: (f.write(_header_bytes(n, h, w, dtype, desc)), f.write(_encode(masks, dtype))))
    return path


def _check_description(description: object) -> dict:
    if description is None:
        return {}
    if not isinstance(description, Mapping):
        raise TypeError(f"description must be a dict of JSON values, got {type(description).__name__}")
    try:
        json.dumps(dict(description))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"description must be JSON-serialisable (str, numbers, lists, dicts): {exc}") from None
    return dict(description)


def _label_index(label: Any) -> int:
    if isinstance(label, Tensor) and label.numel() == 1 and not label.is_floating_point():
        return int(label)
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        return int(label)
    raise TypeError(
        f"precompute_masks needs integer class-index labels, got {label!r}; map the labels to indices in the "
        "dataset, pass label_key=<its position>, or targets='predicted'"
    )


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
                     targets: Literal["labels", "predicted"] = "labels",
                     description: dict | None = None) -> Path:
    """Run a CAM over a whole dataset at feature-map resolution and store the masks compactly.

    The CAM runs the model in eval mode (each module's mode is restored afterwards) on ``device``;
    the caller's model is never moved (another ``device`` than the model's runs a copy). Each mask is
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
        device: where the CAM runs (default: the model's device; another device gets a copy of
            the model, the caller's stays where it is).
        image_key, label_key: where the image and the label are in a sample.
        targets: ``"labels"`` (CAM of the true class; needs ``label_key``) or ``"predicted"``;
            ``"label"`` is the deprecated spelling.
        description: extra JSON-serialisable entries stored in the header's description (the
            entries describing the file itself, ``image_size``, ``mask_size``, ``num_samples`` and
            ``dtype``, are always the file's own).

    Returns:
        ``Path(path)``.

    Raises:
        TypeError, ValueError: bad arguments, non-tensor images, non-integer labels, or images of
            different sizes.
        IsADirectoryError, NotADirectoryError, PermissionError: ``path`` cannot be written; checked
            before any mask is computed.
    """
    from salaug.cam import create_cam

    check_choice("dtype", dtype, tuple(_DTYPE_CODES))
    targets = check_targets("targets", targets, "precompute_masks")
    check_key("image_key", image_key)
    check_key("label_key", label_key, optional=True)
    if targets == "labels" and label_key is None:
        raise ValueError("targets='labels' needs label_key; pass targets='predicted' for unlabelled data")
    check_int("batch_size", batch_size, low=1)
    check_int("num_workers", num_workers, low=0)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be a map-style dataset (with __len__ and __getitem__), got {type(dataset).__name__}"
        )
    extra = _check_description(description)
    # the output is checked before the (long) computation, not when the file is renamed at the end
    path = check_output_file(path, "mask file")
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty: nothing to precompute")
    try:
        run_on = torch.device(device) if device is not None else None
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None

    def collate(samples: list) -> tuple[Tensor, Tensor | None]:
        images = [_image_tensor(get_field(s, image_key, "images", "image_key"), "precompute_masks") for s in samples]
        sizes = sorted({tuple(im.shape) for im in images})
        if len(sizes) > 1:
            raise ValueError(
                f"precompute_masks needs images of one size, got {sizes[:4]}; resize them in the dataset's "
                "transform (a full resize, e.g. v2.Resize((224, 224)), keeps the masks aligned)"
            )
        labels = None
        if targets == "labels":
            labels = torch.as_tensor([_label_index(get_field(s, label_key, "labels", "label_key")) for s in samples])
        return torch.stack(images), labels

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, collate_fn=collate)
    cam_obj = create_cam(cam, model_on(model, run_on), target_layer=target_layer)
    device = model_device(cam_obj.model) or torch.device("cpu")
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
                    "targets": targets,
                    "dataset": type(dataset).__name__,
                    **extra,
                    "image_size": list(image_size),
                    "mask_size": list(shape),
                    "num_samples": n,
                    "dtype": dtype,
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

    _atomic_write(path, write)  # the CAM engine keeps every module's mode (eval for its forwards)
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
        TypeError: ``path`` is not a path or a MaskBank (e.g. ``None``), or a bad argument type.
        FileNotFoundError, IsADirectoryError: ``path`` is missing or a directory.
        ValueError: the file is not a mask file, is corrupt or truncated, or holds another number
            of masks than the dataset has samples (the message names the file).
    """

    def __init__(self, dataset: Dataset, path: str | os.PathLike | MaskBank,
                 transforms: Callable | None = None, *, image_key: int | str = 0,
                 mask_key: str = MASK_KEY) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"MaskedDataset needs a map-style dataset (with __len__ and __getitem__), got "
                f"{type(dataset).__name__}"
            )
        if transforms is not None and not callable(transforms):
            raise TypeError(
                f"transforms must be a torchvision v2 transform (callable), got {type(transforms).__name__}"
            )
        check_key("image_key", image_key)
        if not isinstance(mask_key, str):
            raise TypeError(f"mask_key must be a str (the key added to dict samples), got {mask_key!r}")
        self.dataset = dataset
        n = len(dataset)
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
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self._wrap(self.dataset[index], self.bank[index])

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Several samples at once: uses the wrapped dataset's ``__getitems__`` when it has one
        (batched rendering) and reads the masks in one memmap gather."""
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(list(indices)) if getitems is not None else [self.dataset[i] for i in indices]
        masks = self.bank.get(list(indices))
        return [self._wrap(sample, mask) for sample, mask in zip(samples, masks, strict=True)]

    def _wrap(self, sample: Any, mask: Tensor):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        image = get_field(sample, self.image_key, "images", "image_key")
        if isinstance(image, Tensor):
            if image.ndim not in (2, 3):
                raise ValueError(f"MaskedDataset: images must be (C, H, W) or (H, W), got {tuple(image.shape)}")
            image = tv_tensors.Image(image)
        elif isinstance(image, np.ndarray) or hasattr(image, "getbands"):  # numpy / PIL
            image = TF.to_image(image)
        else:
            raise TypeError(
                f"MaskedDataset: images must be tensors, PIL images or numpy arrays, got {type(image).__name__} "
                f"at image_key={self.image_key!r}; pass image_key=<position of the image>"
            )
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
