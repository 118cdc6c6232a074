"""Pictures: saliency colour maps, overlays, boxes and captioned PNG grids.

Pure torch colour mapping (no matplotlib); PNG writing and text use Pillow, which torchvision
already depends on (imported lazily, only by :func:`save_grid`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from salaug._checks import check_float, check_images, check_int, check_saliency_shape, resize_saliency

__all__ = ["colorize", "draw_boxes", "overlay", "save_grid", "to_display"]


def colorize(saliency: Tensor) -> Tensor:
    """Map saliency to colours with a jet-like colour map (blue → cyan → yellow → red).

    Values are clamped to ``[0, 1]`` first; NaN maps to 0.

    Args:
        saliency: ``(B, 1, H, W)`` (or ``(B, H, W)``) float in ``[0, 1]``.

    Returns:
        ``(B, 3, H, W)`` float32 RGB in ``[0, 1]`` on the same device.

    Example:
        >>> colorize(torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3))[0, :, 0].T.tolist()
        [[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]]
    """
    s = torch.nan_to_num(check_saliency_shape(saliency).to(torch.float32), nan=0.0).clamp(0, 1)
    centers = torch.tensor([3.0, 2.0, 1.0], device=s.device).view(1, 3, 1, 1)  # R, G, B peaks (x 1/4)
    return (1.5 - (4 * s - centers).abs()).clamp(0, 1)


def _as_rgb(images: Tensor) -> Tensor:
    images = check_images(images)
    c = images.shape[1]
    if c == 1:
        return images.expand(-1, 3, -1, -1)
    if c == 3:
        return images
    if c == 4:
        return images[:, :3]
    raise ValueError(f"images must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels, got {c}")


def to_display(images: Tensor) -> Tensor:
    """Min-max each image to ``[0, 1]`` RGB for display: training images are usually normalised.

    Args:
        images: ``(B, C, H, W)`` float, any range, ``C`` in {1, 3, 4}.

    Returns:
        ``(B, 3, H, W)`` float32 in ``[0, 1]``; a constant image becomes zeros. NaN and inf
        pixels become 0 and do not count towards an image's range.

    Example:
        >>> to_display(torch.tensor([[[[-2.0, 2.0]]]])).flatten().tolist()
        [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    """
    rgb = _as_rgb(images).detach().to(torch.float32)
    finite = torch.isfinite(rgb)
    flat = rgb.flatten(1)
    ok = finite.flatten(1)
    # the range of the finite pixels: one NaN or inf must not blank (or NaN) the whole image
    lo = torch.where(ok, flat, torch.inf).amin(1).view(-1, 1, 1, 1)
    hi = torch.where(ok, flat, -torch.inf).amax(1).view(-1, 1, 1, 1)
    lo, hi = torch.nan_to_num(lo, posinf=0.0), torch.nan_to_num(hi, neginf=0.0)  # all non-finite
    out = ((rgb - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    return torch.where(finite, out, torch.zeros((), device=out.device))


def overlay(images: Tensor, saliency: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend colourised saliency over images: ``(1 - alpha) * image + alpha * colorize(saliency)``.

    Args:
        images: ``(B, C, H, W)`` float in ``[0, 1]`` (``C`` = 1 broadcasts to RGB, ``C`` = 4 drops
            alpha); values outside are clamped (un-normalise mean/std images first).
        saliency: ``(B, 1, h, w)`` float in ``[0, 1]``; resized bilinearly to ``(H, W)``.
        alpha: weight of the colour map, in ``[0, 1]``.

    Returns:
        ``(B, 3, H, W)`` float32 in ``[0, 1]``; NaN pixels and saliency count as 0.

    Raises:
        TypeError: ``alpha`` is not a number, or a non-float saliency.
        ValueError: bad shapes, a batch mismatch, or ``alpha`` outside ``[0, 1]``.

    Example:
        >>> out = overlay(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 4, 4), alpha=0.5)
        >>> out.shape, out[0, :, 0, 0].tolist()
        (torch.Size([2, 3, 8, 8]), [0.25, 0.0, 0.0])
    """
    alpha = check_float("alpha", alpha, low=0.0, high=1.0)
    rgb = torch.nan_to_num(_as_rgb(images).to(torch.float32), nan=0.0).clamp(0, 1)
    s = check_saliency_shape(saliency).to(device=rgb.device, dtype=torch.float32)
    if s.shape[0] != rgb.shape[0]:
        raise ValueError(f"saliency batch size {s.shape[0]} does not match images batch size {rgb.shape[0]}")
    s = resize_saliency(s, tuple(rgb.shape[-2:]))  # type: ignore[arg-type]
    return torch.lerp(rgb, colorize(s), alpha)


def _to_uint8(images: Tensor) -> Tensor:
    x = torch.nan_to_num(images.detach().to(torch.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def draw_boxes(
    images: Tensor,
    boxes: Tensor | Sequence[Tensor],
    color: str | tuple[int, int, int] = "red",
    width: int = 1,
    labels: Sequence[str] | None = None,
) -> Tensor:
    """Draw boxes on images (one loop over images: this is for pictures, not a hot path).

    Args:
        images: ``(B, C, H, W)`` float in ``[0, 1]`` (1 or 3 channels).
        boxes: ``(B, 4)`` half-open ``xyxy`` pixel boxes (one per image), or a list of ``B``
            ``(n_i, 4)`` tensors. The outline is drawn on the box's outermost pixels.
        color: a colour name or an RGB tuple of ints in ``[0, 255]``.
        width: line width in pixels.
        labels: optional text per image, drawn at the top-left corner of its (first) box.

    Returns:
        ``(B, 3, H, W)`` float32 in ``[0, 1]`` on the images' device.

    Raises:
        ValueError: boxes of the wrong shape or count, NaN / inf coordinates, ``width`` < 1.

    Example:
        >>> out = draw_boxes(torch.zeros(1, 3, 8, 8), torch.tensor([[2.0, 2.0, 6.0, 6.0]]), color=(255, 0, 0))
        >>> out[0, :, 2, 2].tolist(), out[0, :, 5, 5].tolist(), out[0, :, 4, 4].tolist()
        ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    """
    from torchvision.utils import draw_bounding_boxes

    rgb = _as_rgb(images)
    b, _, h, w = rgb.shape
    check_int("width", width, low=1)
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape != (b, 4):
            raise ValueError(
                f"boxes must be a ({b}, 4) tensor or a list of {b} (n_i, 4) tensors, got {tuple(boxes.shape)}"
            )
        per_image = list(boxes.unsqueeze(1).unbind(0))
    else:
        per_image = list(boxes)
        if len(per_image) != b:
            raise ValueError(f"boxes must hold one (n_i, 4) tensor per image ({b}), got {len(per_image)}")
    if labels is not None and len(labels) != b:
        raise ValueError(f"labels must hold one string per image ({b}), got {len(labels)}")
    pixels = _to_uint8(rgb)
    out = []
    for i in range(b):  # not a hot path: torchvision draws one image at a time
        if not isinstance(per_image[i], Tensor) or per_image[i].numel() % 4:
            raise ValueError(f"boxes of image {i} must be an (n, 4) tensor, got {per_image[i]!r}")
        bx = per_image[i].detach().to(device="cpu", dtype=torch.float32).reshape(-1, 4)
        if not bool(torch.isfinite(bx).all()):  # a picture, on the host already: no hot-path sync
            raise ValueError(f"boxes of image {i} contain NaN or inf: {bx.tolist()}; drop or fix them")
        # Half-open → the inclusive pixel coordinates PIL draws, clipped to the image.
        bx = torch.stack([bx[:, 0], bx[:, 1], bx[:, 2] - 1, bx[:, 3] - 1], dim=1)
        bx = torch.minimum(bx.clamp(min=0), torch.tensor([w - 1.0, h - 1.0, w - 1.0, h - 1.0]))
        text = None if labels is None else [labels[i]] + [""] * (bx.shape[0] - 1)
        if bx.shape[0] == 0:
            out.append(pixels[i])
            continue
        out.append(draw_bounding_boxes(pixels[i], bx, labels=text, colors=color, width=width))
    return torch.stack(out).to(device=images.device, dtype=torch.float32) / 255


def _auto_scale(height: int, width: int) -> int:
    """Integer upscale factor that makes small tiles (CIFAR, 64 px) readable: about 128 px."""
    return max(1, math.ceil(128 / max(height, width)))


def save_grid(
    rows: Sequence[Tensor] | Mapping[str, Tensor],
    path: str | os.PathLike,
    nrow: int | None = None,
    captions: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
    scale: int | None = None,
    padding: int = 2,
) -> Path:
    """Write a PNG grid: one row per tensor (e.g. originals / overlays / augmented).

    Args:
        rows: a list of ``(B, C, H, W)`` float tensors in ``[0, 1]`` (``C`` in {1, 3, 4}), or a
            dict ``name -> tensor``, whose names are written above the rows. Rows may differ in
            ``B``; they must share ``(H, W)``.
        path: output file; parent directories are created.
        nrow: at most this many images per row (``None``: all).
        captions: text under the tiles: a list of strings (one per tile) for the **last** row,
            e.g. soft labels ``"3:0.62 7:0.38"``, or a list with one such list (or ``None``) per
            row.
        scale: integer nearest-neighbour upscale of the tiles; ``None`` picks one that makes
            tiles about 128 px so that text fits.
        padding: pixels between tiles.

    Returns:
        The path written, as a :class:`pathlib.Path`.

    Raises:
        TypeError, ValueError: bad rows, captions, ``nrow``, ``scale`` or ``padding``.
        IsADirectoryError, NotADirectoryError, PermissionError: ``path`` cannot be written
            (checked before anything is drawn).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_grid({"images": torch.rand(3, 3, 16, 16)}, os.path.join(d, "a", "g.png"),
        ...                   captions=["0:1.00", "1:0.50 2:0.50", "2:1.00"], scale=4)
        ...     p.exists(), p.suffix
        (True, '.png')
    """
    from PIL import Image, ImageDraw, ImageFont

    names: list[str | None]
    if isinstance(rows, Mapping):
        names, tensors = list(rows.keys()), list(rows.values())
    else:
        tensors = list(rows)
        names = [None] * len(tensors)
    if not tensors:
        raise ValueError("rows must hold at least one (B, C, H, W) tensor")
    tensors = [_as_rgb(t) for t in tensors]
    h, w = tensors[0].shape[-2:]
    for t in tensors:
        if t.shape[-2:] != (h, w):
            raise ValueError(f"all rows must share one image size, got {tuple(t.shape[-2:])} and {(h, w)}")
    if nrow is not None:
        check_int("nrow", nrow, low=1)
    if scale is not None:
        check_int("scale", scale, low=1)
    check_int("padding", padding, low=0)
    from salaug.data._paths import check_output_file

    path = check_output_file(path, "picture file")  # before drawing anything
    ncol = max(t.shape[0] for t in tensors) if nrow is None else min(nrow, max(t.shape[0] for t in tensors))

    row_captions: list[Sequence[str] | None] = [None] * len(tensors)
    if captions is not None:
        captions = list(captions)
        if captions and all(isinstance(c, str) for c in captions):
            row_captions[-1] = captions  # type: ignore[assignment]
        else:
            if len(captions) != len(tensors):
                raise ValueError(
                    f"captions must be a list of strings (for the last row) or one list (or None) per row "
                    f"({len(tensors)} rows), got {len(captions)} entries"
                )
            row_captions = captions
    for t, caps in zip(tensors, row_captions, strict=True):
        if caps is not None and len(caps) < min(ncol, t.shape[0]):
            raise ValueError(f"a row of {min(ncol, t.shape[0])} tiles needs as many captions, got {len(caps)}")

    scale = _auto_scale(h, w) if scale is None else scale
    th, tw = h * scale, w * scale
    font = ImageFont.load_default()
    line = 12  # the default bitmap font is ~11 px high
    title_h = line + 2 if any(n is not None for n in names) else 0
    row_heights = [title_h + th + (line + 2 if caps is not None else 0) for caps in row_captions]
    width_px = padding + ncol * (tw + padding)
    height_px = padding + sum(rh + padding for rh in row_heights)
    canvas = torch.full((3, height_px, width_px), 255, dtype=torch.uint8)

    y = padding
    text_items: list[tuple[int, int, str]] = []
    for t, name, caps, rh in zip(tensors, names, row_captions, row_heights, strict=True):
        if name is not None:
            text_items.append((padding, y, str(name)))
        tiles = _to_uint8(t[:ncol])
        if scale > 1:
            tiles = tiles.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        for j in range(tiles.shape[0]):  # pasting tiles into a canvas, not a hot path
            x = padding + j * (tw + padding)
            canvas[:, y + title_h : y + title_h + th, x : x + tw] = tiles[j]
            if caps is not None:
                text_items.append((x + 1, y + title_h + th + 1, str(caps[j])))
        y += rh + padding

    image = Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy())
    draw = ImageDraw.Draw(image)
    for x, ty, text in text_items:
        draw.text((x, ty), text, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
