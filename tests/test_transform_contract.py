"""The contract every saliency transform keeps (DESIGN.md, Contracts), checked for all seven."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from salaug.transforms.base import SalientBatch
from salaug.transforms.crop import SalientCrop
from salaug.transforms.erase import KeepCutout
from salaug.transforms.mix import AttentiveCutMix, GuidedMixup, SaliencyMix, SnapMix
from salaug.transforms.paste import SalientPaste

K = 5

# name -> factory(**kwargs); settings chosen so every transform works on 8x8 images
FACTORIES = {
    "SalientCrop": lambda **kw: SalientCrop(**kw),
    "SaliencyMix": lambda **kw: SaliencyMix(**kw),
    "AttentiveCutMix": lambda **kw: AttentiveCutMix(grid=(4, 4), k=4, **kw),
    "SnapMix": lambda **kw: SnapMix(**kw),
    "GuidedMixup": lambda **kw: GuidedMixup(sigma=1.0, **kw),
    "SalientPaste": lambda **kw: SalientPaste(**kw),
    "SalientPaste-reflect": lambda **kw: SalientPaste(background="reflect", **kw),
    "SalientPaste-constant": lambda **kw: SalientPaste(background="constant", label_rule="mass", **kw),
    "KeepCutout": lambda **kw: KeepCutout(**kw),
    "KeepCutout-random": lambda **kw: KeepCutout(value="random", **kw),
}
NAMES = list(FACTORIES)
MIXES = ["SaliencyMix", "AttentiveCutMix", "SnapMix", "GuidedMixup", "SalientPaste"]


def make(name, seed=0, **kw):
    kw.setdefault("num_classes", K)
    return FACTORIES[name](generator=torch.Generator().manual_seed(seed), **kw)


def batch(b=8, size=(16, 16), c=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, *size, generator=g).to(dtype)
    s = torch.rand(b, 1, *size, generator=g) ** 2
    y = torch.randint(0, K, (b,), generator=g)
    return x, s, y


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
    torch.testing.assert_close(out.labels.sum(1), torch.ones(b), atol=1e-5, rtol=0)


def changed(out, x, s):
    """(B,) bool: samples whose images or saliency differ from the input."""
    if out.images.shape != x.shape:
        return torch.ones(x.shape[0], dtype=torch.bool)
    return (out.images != x).flatten(1).any(1) | (out.saliency != s).flatten(1).any(1)


# -- labels --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_labels_are_soft_rows_summing_to_one(name):
    x, s, y = batch()
    out = make(name)(x, s, y)
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
def test_p0_returns_inputs_unchanged(name):
    x, s, y = batch()
    out, params = make(name, p=0.0)(x, s, y, return_params=True)
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
def test_params_replay_exactly_and_on_another_batch(name):
    x, s, y = batch(seed=5)
    t = make(name)
    out, params = t(x, s, y, return_params=True)
    assert all(isinstance(v, torch.Tensor) for v in params.values())
    state = t.generator.get_state()
    again = t(x, s, y, params=params)
    assert torch.equal(t.generator.get_state(), state)  # a replay draws nothing
    for u, v in zip(out, again):
        assert torch.equal(u, v)
    # replay on another batch of the same size (e.g. masks): deterministic, same shapes
    x2, s2, y2 = batch(seed=6)
    r1, r2 = t(x2, s2, y2, params=params), t(x2, s2, y2, params=params)
    check_out(r1, x2)
    for u, v in zip(r1, r2):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="batch"):
        t(x[:4], s[:4], y[:4], params=params)


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


# -- bad inputs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_clear_errors(name):
    t = make(name)
    x, s, y = batch(b=4)
    with pytest.raises(ValueError, match="batch size"):
        t(x, s[:3], y)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        t(x, s.expand(-1, 2, -1, -1), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        t(x, s * 3, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        t(x, s - 1, y)
    with pytest.raises(ValueError, match="num_classes"):
        make(name, num_classes=None)(x, s, y)
    with pytest.raises(ValueError, match="label indices"):
        t(x, s, torch.tensor([0, 1, 2, K]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        t(x[0], s[0], y[:1])
    with pytest.raises(TypeError, match="floating"):
        t((x * 100).to(torch.uint8), s, y)
    with pytest.raises(ValueError, match="p must be"):
        make(name, p=1.5)


# -- dtypes ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_is_kept(name, dtype):
    x, s, y = batch(dtype=dtype)
    out = make(name)(x, s, y)
    check_out(out, x)
    ref = make(name)(x.float(), s, y)
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float64: 1e-5}[dtype]
    torch.testing.assert_close(out.images.float(), ref.images, atol=tol, rtol=tol)
    torch.testing.assert_close(out.labels, ref.labels, atol=1e-5, rtol=0)


# -- hypothesis ---------------------------------------------------------------------------------------------------------
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


# -- CUDA: no host syncs in the hot path ---------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_no_host_sync(name):
    from salaug._checks import set_value_checks

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
