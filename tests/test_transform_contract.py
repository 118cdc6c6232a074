"""The contract every saliency transform keeps, checked for every transform.

Tests that take the ``device`` / ``dtype`` fixtures (tests/conftest.py) run on CPU and, when
present, CUDA. Per-transform files test each transform's own maths, not this contract.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from salaug.transforms.base import SalientBatch
from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.mix import (
    AttentiveCutMix,
    GuidedMixup,
    ResizeMix,
    SaliencyMix,
    SnapMix,
)
from salaug.transforms.paste import SalientPaste
from salaug.transforms.puzzle import PuzzleMix

K = 5

# name -> factory(**kwargs); settings chosen so every transform works on 8x8 images
FACTORIES = {
    "SalientCrop": lambda **kw: SalientCrop(**kw),
    "SaliencyMix": lambda **kw: SaliencyMix(**kw),
    "AttentiveCutMix": lambda **kw: AttentiveCutMix(grid=(4, 4), k=4, **kw),
    "SnapMix": lambda **kw: SnapMix(**kw),
    "ResizeMix": lambda **kw: ResizeMix(**kw),
    "PuzzleMix": lambda **kw: PuzzleMix(**{"p": 1.0, **kw}),
    "PuzzleMix-transport": lambda **kw: PuzzleMix(**{"p": 1.0, "transport": True, "labels": "saliency", **kw}),
    "GuidedMixup": lambda **kw: GuidedMixup(sigma=1.0, **kw),
    "SalientPaste": lambda **kw: SalientPaste(**kw),
    "SalientPaste-reflect": lambda **kw: SalientPaste(background="reflect", **kw),
    "SalientPaste-constant": lambda **kw: SalientPaste(background="constant", labels="saliency", **kw),
    "KeepCutout": lambda **kw: KeepCutout(**kw),
    "KeepCutout-random": lambda **kw: KeepCutout(value="random", **kw),
}
NAMES = list(FACTORIES)
MIXES = ["SaliencyMix", "AttentiveCutMix", "SnapMix", "ResizeMix", "GuidedMixup", "SalientPaste", "PuzzleMix"]


def make(name, seed=0, device="cpu", **kw):
    kw.setdefault("num_classes", K)
    return FACTORIES[name](generator=torch.Generator(device=device).manual_seed(seed), **kw)


def batch(b=8, size=(16, 16), c=3, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, *size, generator=g).to(dtype)
    s = torch.rand(b, 1, *size, generator=g) ** 2
    y = torch.randint(0, K, (b,), generator=g)
    return x.to(device), s.to(device), y.to(device)


def check_out(out, x, k=K, size=None):
    assert isinstance(out, SalientBatch)
    b, c = x.shape[:2]
    hw = size or tuple(x.shape[-2:])
    assert out.images.shape == (b, c, *hw) and out.images.dtype == x.dtype and out.images.device == x.device
    assert out.saliency.shape == (b, 1, *hw) and out.saliency.dtype == torch.float32
    assert torch.isfinite(out.images.float()).all() and torch.isfinite(out.saliency).all()
    assert out.saliency.min() >= 0 and out.saliency.max() <= 1
    assert out.labels.shape == (b, k) and out.labels.dtype == torch.float32
    assert torch.isfinite(out.labels).all() and (out.labels >= 0).all()
    assert out.labels.device == x.device
    torch.testing.assert_close(out.labels.sum(1), torch.ones(b, device=x.device), atol=1e-5, rtol=0)


def changed(out, x, s):
    """(B,) bool: samples whose images or saliency differ from the input."""
    if out.images.shape != x.shape:
        return torch.ones(x.shape[0], dtype=torch.bool)
    return (out.images != x).flatten(1).any(1) | (out.saliency != s).flatten(1).any(1)


# -- labels --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_labels_are_soft_rows_summing_to_one(name, device):
    x, s, y = batch(device=device)
    out = make(name, device=device)(x, s, y)
    check_out(out, x)
    # mass only moves to the partner's class: each row is a mix of its own and its partner's one-hot
    assert ((out.labels > 0).sum(1) <= 2).all()


@pytest.mark.parametrize("name", NAMES)
def test_soft_labels_in_and_chaining_after_crop(name):
    x, s, y = batch()
    soft = torch.softmax(torch.randn(8, K, generator=torch.Generator().manual_seed(1)), 1)
    out = make(name)(x, s, soft)
    check_out(out, x)
    crop = SalientCrop(size=(12, 12), num_classes=K, generator=torch.Generator().manual_seed(2))(x, s, y)
    out = make(name, num_classes=None)(crop.images, crop.saliency, crop.labels)
    check_out(out, crop.images)
    # integer labels need num_classes: the call-time override works too
    out = make(name, num_classes=None)(x, s, y, num_classes=K)
    check_out(out, x)


# -- p -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_p0_returns_inputs_unchanged(name, device):
    x, s, y = batch(device=device)
    out, params = make(name, p=0.0, device=device)(x, s, y, return_params=True)
    assert not params["applied"].any()
    assert torch.equal(out.images, x) and torch.equal(out.saliency, s)
    assert torch.equal(out.labels, F.one_hot(y, K).float())


@pytest.mark.parametrize("name", NAMES)
def test_p_is_drawn_once_per_sample(name):
    b, p = 600, 0.5
    x, s, y = batch(b=b, size=(12, 12))
    out, params = make(name, p=p)(x, s, y, return_params=True)
    applied = params["applied"]
    assert applied.shape == (b,) and applied.dtype == torch.bool
    assert abs(applied.float().mean().item() - p) < 0.07
    diff = changed(out, x, s)
    assert not (diff & ~applied).any()  # samples not drawn are untouched ...
    assert torch.equal(out.labels[~applied], F.one_hot(y[~applied], K).float())  # ... labels too
    # ... and those drawn really are transformed: p applied twice would give ~p^2 = 0.25
    assert abs(diff.float().mean().item() - p) < 0.1


# -- per-sample randomness, reproducibility, replay -----------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_each_sample_gets_its_own_box_or_partner(name):
    x, s, y = batch(b=16, size=(24, 24))
    out = make(name)(x, s, y)
    _, params = make(name)(x, s, y, return_params=True)
    if name == "SalientCrop":
        patterns = {tuple(b) for b in params["boxes"].tolist()}
    elif name.startswith("SalientPaste-"):  # a padded canvas changes every pixel: compare its layout
        patterns = {tuple(b) for b in params["dst_boxes"].tolist()}
    elif name == "GuidedMixup":
        patterns = {round(v, 4) for v in out.labels.max(1).values.tolist()}
    else:
        masks = (out.images != x).any(1).flatten(1)
        patterns = {bytes(m.to(torch.uint8).tolist()) for m in masks}
    assert len(patterns) > 8, patterns


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_other_seed_differs(name):
    x, s, y = batch()
    # p < 1 so that transforms whose geometry is a deterministic function of saliency
    # (GuidedMixup's greedy pairing) still depend on the seed
    a = make(name, seed=3, p=0.7)(x, s, y)
    b = make(name, seed=3, p=0.7)(x, s, y)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    others = [make(name, seed=seed, p=0.7)(x, s, y) for seed in (4, 5, 6)]
    assert sum(all(torch.equal(u, v) for u, v in zip(a, c)) for c in others) <= 1


@pytest.mark.parametrize("name", NAMES)
def test_params_replay_exactly_and_on_another_batch(name, device):
    x, s, y = batch(seed=5, device=device)
    t = make(name, device=device)
    out, params = t(x, s, y, return_params=True)
    assert all(isinstance(v, torch.Tensor) and v.device == x.device for v in params.values())
    assert "perm" in params if name.split("-")[0] in MIXES else "perm" not in params
    state = t.generator.get_state()
    again = t(x, s, y, params=params)
    assert torch.equal(t.generator.get_state(), state)  # a replay draws nothing
    for u, v in zip(out, again):
        assert torch.equal(u, v)
    # replay on another batch of the same size (e.g. masks): deterministic, same shapes
    x2, s2, y2 = batch(seed=6, device=device)
    r1, r2 = t(x2, s2, y2, params=params), t(x2, s2, y2, params=params)
    check_out(r1, x2)
    for u, v in zip(r1, r2):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="batch"):
        t(x[:4], s[:4], y[:4], params=params)
    # params remember the image size and the transform they were sampled for
    x3, s3, y3 = batch(size=(12, 12), device=device)
    with pytest.raises(ValueError, match="images of 16x16 but these are 12x12"):
        t(x3, s3, y3, params=params)
    other = next(n for n in NAMES if n.split("-")[0] != name.split("-")[0])
    with pytest.raises(ValueError, match=f"sampled by {name.split('-')[0]}, not {other.split('-')[0]}"):
        make(other, device=device)(x, s, y, params=params)
    # a plain dict (e.g. rebuilt by a comprehension) replays the same, with shape checks only
    plain = {k: v.clone() for k, v in params.items()}
    assert torch.equal(t(x, s, y, params=plain).images, out.images)
    with pytest.raises(ValueError, match="batch"):
        t(x[:4], s[:4], y[:4], params=plain)


# -- masks replay as masks -----------------------------------------------------------------------------------------
def _masks(x):
    """A label map of 4 classes (0 included), the same as a bool and as a binary float mask."""
    g = torch.Generator().manual_seed(11)
    b, _, h, w = x.shape
    labels = torch.randint(0, 4, (b, 1, h // 2, w // 2), generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3)
    return labels.to(x.device)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["int64", "bool", "float-nearest"])
def test_a_replay_on_masks_keeps_their_dtype_and_values(name, kind, device):
    x, s, y = batch(seed=7, size=(16, 20), device=device)
    t = make(name, device=device, p=0.75)
    out, params = t(x, s, y, return_params=True)
    labels = _masks(x)
    masks = {"int64": labels, "bool": labels > 1, "float-nearest": (labels > 1).float()}[kind]
    kw = {"interpolation": "nearest"} if kind == "float-nearest" else {}
    moved = t(masks, s, y, params=params, **kw).images
    size = tuple(out.images.shape[-2:])
    assert moved.dtype == masks.dtype and moved.shape == (*masks.shape[:2], *size)
    assert set(moved.unique().tolist()) <= set(masks.unique().tolist())  # no value that was not there
    # where the images' replay left a pixel as it was, the mask is as it was too
    if size == tuple(x.shape[-2:]):
        kept = (out.images == x).all(1, keepdim=True)
        assert torch.equal(moved[kept], masks[kept])
    # each pixel takes the value of the input pixel it came from: replay the pixels' own ids (float64
    # holds them exactly) and read the label map there; 0 where a pixel shows no image
    b, _, h, w = x.shape
    ids = torch.arange(1, b * h * w + 1, dtype=torch.float64, device=device).view(b, 1, h, w)
    came_from = t(ids, s, y, params=params, interpolation="nearest").images.long()
    assert set(came_from.unique().tolist()) <= set(ids.long().unique().tolist()) | {0}
    padded = torch.cat((torch.zeros(1, dtype=masks.dtype, device=device), masks.flatten()))
    assert torch.equal(moved, padded[came_from])


@pytest.mark.parametrize("name", NAMES)
def test_nearest_replay_of_float_images_copies_pixels(name):
    # pure copies (no resampling) are the same either way; resampled ones take input values only
    x, s, y = batch(seed=8)
    t = make(name, p=0.75)
    out, params = t(x, s, y, return_params=True)
    near = t(x, s, y, params=params, interpolation="nearest")
    assert near.images.dtype == x.dtype and torch.equal(near.labels, out.labels)
    assert set(near.images.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    assert set(near.saliency.unique().tolist()) <= set(s.unique().tolist()) | {0.0}
    if name.split("-")[0] in ("SaliencyMix", "AttentiveCutMix", "PuzzleMix") or name == "KeepCutout":
        assert torch.equal(near.images, out.images) and torch.equal(near.saliency, out.saliency)


@pytest.mark.parametrize("name", NAMES)
def test_masks_are_refused_without_params_and_bilinear_masks_are_refused(name):
    x, s, y = batch()
    t = make(name)
    masks = (x[:, :1] > 0).long()
    with pytest.raises(TypeError, match=r"floating-point .* images.float\(\) / 255.* params=params\), which keeps "
                                        r"their dtype and values"):
        t(masks, s, y)
    _, params = t(x, s, y, return_params=True)
    with pytest.raises(ValueError, match="interpolation='bilinear' blends pixels"):
        t(masks, s, y, params=params, interpolation="bilinear")
    with pytest.raises(ValueError, match=r"interpolation must be one of \('bilinear', 'nearest'\)"):
        t(x, s, y, params=params, interpolation="bicubic")
    with pytest.raises(TypeError, match="floating-point tensor \\(or bool / integer masks\\), got torch.complex64"):
        t(torch.complex(x, x), s, y, params=params)


# -- degenerate inputs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["zero", "constant", "border", "corner_peak"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (4, 8, 8), (3, 9, 13)])
def test_degenerate_inputs_stay_finite(name, kind, shape):
    b, h, w = shape
    x, s, y = batch(b=b, size=(h, w))
    if kind == "zero":
        s = torch.zeros_like(s)
    elif kind == "constant":
        s = torch.full_like(s, 0.5)
    elif kind == "border":
        s = torch.zeros_like(s)
        s[..., :, -1] = 1.0  # all mass on the right border
    else:
        s = torch.zeros_like(s)
        s[..., 0, 0] = 1.0
    out = make(name)(x, s, y)
    check_out(out, x)


# (bad inputs: tests/test_transforms_bad_input.py)


# -- dtypes ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_dtype_is_kept(name, dtype, device):
    x, s, y = batch(dtype=dtype, device=device)
    out = make(name, device=device)(x, s, y)
    check_out(out, x)
    ref = make(name, device=device)(x.float(), s, y)
    tol = {torch.float32: 0.0, torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float64: 1e-5}[dtype]
    torch.testing.assert_close(out.images.float(), ref.images, atol=tol, rtol=tol)
    torch.testing.assert_close(out.labels, ref.labels, atol=1e-5, rtol=0)


# -- layouts, gradients, pickling, call-time generator ------------------------------------------------------------
LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "transposed": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2),
    "strided": lambda t: torch.stack((t, t), -1)[..., 0],
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_any_memory_layout_gives_the_same_result(name, layout, device):
    x, s, y = batch(device=device)
    ref, params = make(name, device=device)(x, s, y, return_params=True)
    xl, sl = LAYOUTS[layout](x), LAYOUTS[layout](s)
    assert not xl.is_contiguous() and torch.equal(xl, x)
    out = make(name, device=device)(xl, sl, y)
    again = make(name, device=device)(xl, sl, y, params=params)
    for got in (out, again):
        for u, v in zip(got, ref):
            torch.testing.assert_close(u, v, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_flow_to_the_images(name, device):
    x, s, y = batch(device=device)
    x = x.requires_grad_(True)
    out = make(name, device=device)(x, s, y)
    assert out.images.requires_grad
    weight = torch.randn(out.images.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (out.images * weight).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():  # the result does not depend on whether a graph is recorded
        plain = make(name, device=device)(x.detach(), s, y)
    torch.testing.assert_close(out.images.detach(), plain.images, atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_pickle_round_trip(name):
    t = make(name, seed=7, p=0.7)
    copy = pickle.loads(pickle.dumps(t))  # DataLoader workers pickle the collate and its transform
    assert repr(copy) == repr(t)
    x, s, y = batch()
    a, params = t(x, s, y, return_params=True)
    b = copy(x, s, y)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    params2 = pickle.loads(pickle.dumps(params))  # params keep their record through pickling
    assert params2.sampled_for == params.sampled_for
    with pytest.raises(ValueError, match="batch"):
        t(x[:4], s[:4], y[:4], params=params2)


@pytest.mark.parametrize("name", NAMES)
def test_call_time_generator_overrides_the_constructors(name):
    x, s, y = batch()
    t = make(name, seed=1, p=0.7)
    state = t.generator.get_state()
    a = t(x, s, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t.generator.get_state(), state)  # the constructor's generator is not touched
    b = make(name, seed=3, p=0.7)(x, s, y)  # = a transform built with that generator
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(TypeError, match="torch.Generator"):
        t(x, s, y, generator=3)


def test_call_time_generators_are_thread_safe():
    from concurrent.futures import ThreadPoolExecutor

    t = make("SalientPaste")
    x, s, y = batch(b=16, size=(24, 24))
    want = {seed: t(x, s, y, generator=torch.Generator().manual_seed(seed)).images for seed in range(8)}

    def run(seed):
        return [t(x, s, y, generator=torch.Generator().manual_seed(seed)).images for _ in range(5)]

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(range(8), pool.map(run, range(8))))
    for seed, outs in results.items():
        assert all(torch.equal(o, want[seed]) for o in outs)


def test_repr_shows_the_constructor_arguments():
    assert repr(SaliencyMix(10, alpha=0.5)) == "SaliencyMix(num_classes=10, alpha=0.5, labels='area', p=0.5)"
    assert "grid=(4, 4), k=4" in repr(make("AttentiveCutMix"))
    assert "background='constant'" in repr(make("SalientPaste-constant"))


@pytest.mark.parametrize("name", NAMES)
def test_arguments_after_the_first_are_keyword_only(name):
    t = make(name)
    assert t.num_classes == K
    with pytest.raises(TypeError, match="positional"):
        type(t)(K, 0.5)


# -- hypothesis -------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(NAMES), b=st.integers(1, 6), h=st.integers(8, 20), w=st.integers(8, 20),
       p=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**31 - 1), soft=st.booleans())
def test_contract_holds_for_any_shape_p_and_seed(name, b, h, w, p, seed, soft):
    x, s, y = batch(b=b, size=(h, w), seed=seed % 1000)
    labels = F.one_hot(y, K).float() if soft else y
    t = make(name, seed=seed, p=p)
    out, params = t(x, s, labels, return_params=True)
    check_out(out, x)
    if p == 0.0:
        assert torch.equal(out.images, x)
    again = t(x, s, labels, params=params)
    assert torch.equal(again.images, out.images) and torch.equal(again.labels, out.labels)


# -- CUDA: no host syncs in the hot path -------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_no_host_sync(name):
    from salaug import set_value_checks

    x, s, y = (v.cuda() for v in batch(b=16, size=(32, 32)))
    t = FACTORIES[name](num_classes=K, generator=torch.Generator(device="cuda").manual_seed(0))
    t(x, s, y)  # warm up (kernels, caches)
    set_value_checks("never")
    try:
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, params = t(x, s, y, return_params=True)
            replay = t(x, s, y, params=params)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    finally:
        set_value_checks("cpu")
    check_out(out, x)
    assert out.images.device.type == "cuda" and all(v.device.type == "cuda" for v in params.values())
    assert torch.equal(replay.images, out.images)
