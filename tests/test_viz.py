"""Colour maps, overlays, boxes and PNG grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from salaug.viz import colorize, draw_boxes, overlay, save_grid, to_display


def test_colorize_range_shape_and_jet_order() -> None:
    s = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    rgb = colorize(s)
    assert rgb.shape == (1, 3, 1, 101) and rgb.dtype == torch.float32
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    r, g, b = rgb[0, :, 0]
    assert float(b[0]) > 0.4 and float(r[0]) == 0  # low = blue
    assert float(r[-1]) > 0.4 and float(b[-1]) == 0  # high = red
    assert float(g[50]) == 1.0  # middle = green-ish
    # Ordered like jet: blue peaks low, green in the middle, red high; red rises up to its peak
    # and blue falls after its peak.
    assert int(b.argmax()) < int(g.argmax()) < int(r.argmax())
    assert bool((r[1:80] >= r[:79]).all()) and bool((b[21:] <= b[20:-1]).all())
    # Distinct values give distinct colours (a usable colour map).
    assert float(torch.cdist(rgb[0, :, 0].T[::10], rgb[0, :, 0].T[::10]).add(torch.eye(11)).min()) > 0.1


def test_colorize_clamps_and_accepts_3d() -> None:
    s = torch.tensor([[[-1.0, 2.0, float("nan")]]])  # (B, H, W)
    out = colorize(s)
    assert out.shape == (1, 3, 1, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(out[..., 0], colorize(torch.zeros(1, 1, 1, 1))[..., 0])
    torch.testing.assert_close(out[..., 1], colorize(torch.ones(1, 1, 1, 1))[..., 0])
    with pytest.raises(TypeError, match="floating point"):
        colorize(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


def test_overlay_blends_broadcasts_and_resizes() -> None:
    images = torch.rand(2, 3, 16, 16)
    s = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(overlay(images, s, alpha=0.0), images)
    torch.testing.assert_close(overlay(images, s, alpha=1.0), colorize(s))
    mid = overlay(images, s, alpha=0.3)
    torch.testing.assert_close(mid, 0.7 * images + 0.3 * colorize(s))
    gray = overlay(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 4, 4))
    assert gray.shape == (2, 3, 16, 16) and 0 <= float(gray.min()) and float(gray.max()) <= 1
    wild = overlay(torch.randn(1, 3, 8, 8) * 5, torch.rand(1, 1, 8, 8))  # clamped for display
    assert 0 <= float(wild.min()) and float(wild.max()) <= 1
    with pytest.raises(ValueError, match="batch size"):
        overlay(images, s[:1])
    with pytest.raises(ValueError, match="alpha"):
        overlay(images, s, alpha=2.0)
    with pytest.raises(ValueError, match="channels"):
        overlay(torch.rand(1, 2, 8, 8), torch.rand(1, 1, 8, 8))


def test_draw_boxes_outlines_half_open_boxes() -> None:
    images = torch.zeros(2, 3, 10, 10)
    boxes = torch.tensor([[2.0, 3.0, 6.0, 8.0], [0.0, 0.0, 10.0, 10.0]])
    out = draw_boxes(images, boxes, color=(0, 255, 0))
    assert out.shape == (2, 3, 10, 10) and out.dtype == torch.float32
    green = out[:, 1] > 0.5
    # Image 0: outline on columns 2 and 5, rows 3 and 7; nothing outside or in the middle.
    assert bool(green[0, 3:8, 2].all()) and bool(green[0, 3:8, 5].all())
    assert bool(green[0, 3, 2:6].all()) and bool(green[0, 7, 2:6].all())
    assert int(green[0].sum()) == 2 * 5 + 2 * 4 - 4
    assert not bool(green[0, 4:7, 3:5].any())
    # Image 1: a whole-image box is clipped onto the border.
    assert bool(green[1, 0].all()) and bool(green[1, -1].all()) and bool(green[1, :, -1].all())
    assert torch.equal(images, torch.zeros(2, 3, 10, 10))  # input untouched


def test_draw_boxes_lists_labels_and_errors() -> None:
    images = torch.rand(2, 1, 32, 32)
    out = draw_boxes(images, [torch.tensor([[1.0, 1.0, 9.0, 9.0], [12.0, 12.0, 30.0, 30.0]]), torch.zeros(0, 4)],
                     labels=["a", "b"])
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out[1], images[1].expand(3, -1, -1), atol=1 / 255, rtol=0)  # no box
    with pytest.raises(ValueError, match="boxes"):
        draw_boxes(images, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="labels"):
        draw_boxes(images, torch.zeros(2, 4), labels=["only one"])


def test_save_grid_writes_png_of_expected_size(tmp_path: Path) -> None:
    a, b = torch.rand(4, 3, 16, 20), torch.rand(4, 1, 16, 20)
    path = save_grid([a, b], tmp_path / "deep" / "dir" / "grid.png", scale=1, padding=2)
    assert path == tmp_path / "deep" / "dir" / "grid.png" and path.exists()
    img = Image.open(path)
    assert img.format == "PNG" and img.mode == "RGB"
    assert img.size == (2 + 4 * (20 + 2), 2 + 2 * (16 + 2))
    pixels = torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1)
    expected = (a[0] * 255).round().to(torch.uint8)
    assert torch.equal(pixels[:, 2:18, 2:22], expected)  # tiles are pasted exactly


def test_save_grid_names_captions_nrow_and_scale(tmp_path: Path) -> None:
    rows = {"original": torch.rand(5, 3, 8, 8), "overlay": torch.rand(5, 3, 8, 8), "mixed": torch.rand(3, 3, 8, 8)}
    caps = ["3:0.62 7:0.38", "1:1.00", "0:0.50 2:0.50"]
    path = save_grid(rows, tmp_path / "g.png", nrow=4, captions=caps, scale=None)
    img = Image.open(path)
    scale = 16  # auto: 8 px tiles become 128 px
    tile = 8 * scale
    assert img.size[0] == 2 + 4 * (tile + 2)
    plain = Image.open(save_grid(list(rows.values()), tmp_path / "p.png", nrow=4, scale=scale))
    assert img.size[1] > plain.size[1]  # titles and captions add bands of text
    # Text is drawn: the caption band under the last row is not blank.
    arr = __import__("numpy").asarray(img)
    assert (arr[-14:, :, :] < 128).any()
    per_row = save_grid(rows, tmp_path / "r.png", captions=[None, ["x"] * 5, caps], scale=2)
    assert Image.open(per_row).size[0] == 2 + 5 * (16 + 2)


def test_save_grid_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        save_grid([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="image size"):
        save_grid([torch.rand(1, 3, 8, 8), torch.rand(1, 3, 9, 8)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="captions"):
        save_grid([torch.rand(3, 3, 8, 8)], tmp_path / "x.png", captions=["a"])
    with pytest.raises(ValueError, match="per row"):
        save_grid([torch.rand(3, 3, 8, 8)], tmp_path / "x.png", captions=[["a"] * 3, ["b"] * 3])


# ---------------------------------------------------------------------------------------------
# hostile inputs: a picture, never a NaN or a raw traceback
# ---------------------------------------------------------------------------------------------
def test_colorize_maps_nan_and_inf_to_the_ends() -> None:
    s = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e30]).view(1, 1, 1, 4)
    rgb = colorize(s)
    assert torch.isfinite(rgb).all()
    torch.testing.assert_close(rgb[0, :, 0, 0], colorize(torch.zeros(1, 1, 1, 1))[0, :, 0, 0])
    torch.testing.assert_close(rgb[0, :, 0, 1], colorize(torch.ones(1, 1, 1, 1))[0, :, 0, 0])
    torch.testing.assert_close(rgb[0, :, 0, 2], rgb[0, :, 0, 0])
    torch.testing.assert_close(rgb[0, :, 0, 3], rgb[0, :, 0, 1])


def test_to_display_ignores_non_finite_pixels_for_the_range() -> None:
    x = torch.tensor([0.0, 2.0, float("nan"), float("inf")]).view(1, 1, 1, 4)
    out = to_display(x)
    assert out[0, 0, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert to_display(torch.full((1, 3, 2, 2), float("nan"))).eq(0).all()


def test_overlay_nan_images_and_bad_alpha() -> None:
    images = torch.rand(2, 3, 4, 4)
    images[0, 0, 0, 0] = float("nan")
    out = overlay(images, torch.rand(2, 1, 4, 4))
    assert torch.isfinite(out).all()
    with pytest.raises(TypeError, match="alpha must be a number"):
        overlay(images, torch.rand(2, 1, 4, 4), alpha="0.5")
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\], got nan"):
        overlay(images, torch.rand(2, 1, 4, 4), alpha=float("nan"))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        overlay(images, torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        overlay(torch.rand(2, 2, 4, 4), torch.rand(2, 1, 4, 4))


def test_draw_boxes_bad_boxes_and_width() -> None:
    images = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="NaN or inf"):
        draw_boxes(images, torch.tensor([[0.0, float("nan"), 4.0, 4.0]]))
    with pytest.raises(ValueError, match=r"must be an \(n, 4\) tensor"):
        draw_boxes(images, [torch.zeros(3)])
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        draw_boxes(images, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), width=0)
    with pytest.raises(TypeError, match="width must be an int"):
        draw_boxes(images, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), width=1.5)
    # boxes far outside the image are clipped, not an error
    out = draw_boxes(images, torch.tensor([[-1e9, -1e9, 1e9, 1e9]]), color=(255, 0, 0))
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 7, 7] == 1.0


def test_save_grid_nan_tiles_and_bad_settings(tmp_path: Path) -> None:
    tiles = torch.rand(2, 3, 4, 4)
    tiles[0, :, 0, 0] = float("nan")
    path = save_grid([tiles], tmp_path / "g.png", scale=1, padding=0)
    with Image.open(path) as im:
        assert im.getpixel((0, 0)) == (0, 0, 0)  # NaN drawn as 0, not garbage
    for kwargs, error in [({"scale": 1.5}, TypeError), ({"scale": 0}, ValueError), ({"nrow": "3"}, TypeError),
                          ({"nrow": 0}, ValueError), ({"padding": -1}, ValueError)]:
        with pytest.raises(error):
            save_grid([tiles], tmp_path / "h.png", **kwargs)
    assert not (tmp_path / "h.png").exists()


def test_save_grid_path_is_a_directory_or_under_a_file(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory; give a file name"):
        save_grid([torch.rand(1, 3, 4, 4)], tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        save_grid([torch.rand(1, 3, 4, 4)], tmp_path / "f" / "g.png")
