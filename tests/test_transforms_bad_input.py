"""Bad input to the transforms: a correct result or an error that names the problem and the fix.

Each entry is one distinct bad input a user could pass; the tables are checked for every
transform where the input is one every transform takes.
"""

from __future__ import annotations

import math

import pytest
import torch

from salaug import set_value_checks
from salaug.transforms import (
    AttentiveCutMix,
    GuidedMixup,
    KeepCutout,
    PuzzleMix,
    SaliencyMix,
    SalientCrop,
    SalientPaste,
    SnapMix,
)

K = 4
CLASSES = [SalientCrop, SaliencyMix, AttentiveCutMix, SnapMix, GuidedMixup, SalientPaste, KeepCutout]
IDS = [c.__name__ for c in CLASSES]


def make(cls, **kw):
    if cls is AttentiveCutMix:
        kw.setdefault("grid", (4, 4))
        kw.setdefault("k", 4)
    kw.setdefault("num_classes", K)
    return cls(generator=torch.Generator().manual_seed(0), **kw)


def batch(b=4, h=16, w=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 1, h, w, generator=g), torch.arange(b) % K


# -- constructor arguments: refused at construction, naming the argument -------------------------------------
COMMON_ARGS = [  # (kwargs, error, message)
    ({"num_classes": 2.5}, TypeError,
     r"num_classes must be an int >= 1 or None, got 2.5 \(float\); pass a whole number"),
    ({"num_classes": "4"}, TypeError,
     r"num_classes .* got '4' \(str\); pass a number, not a string, e.g. num_classes=4"),
    ({"num_classes": True}, TypeError, r"num_classes must be an int .* got True \(bool\)"),
    ({"num_classes": 0}, ValueError, r"num_classes must be an int >= 1 or None, got 0"),
    ({"num_classes": -3}, ValueError, r"num_classes must be an int >= 1 or None, got -3"),
    ({"p": "0.5"}, TypeError,
     r"p must be a number in \[0, 1\], got '0.5' \(str\); pass a number, not a string, e.g. p=0.5"),
    ({"p": 1.5}, ValueError, r"p must be a number in \[0, 1\], got 1.5"),
    ({"p": -0.1}, ValueError, r"p must be a number in \[0, 1\], got -0.1"),
    ({"p": math.nan}, ValueError, r"p must be a number in \[0, 1\], got nan"),
    ({"p": True}, TypeError, r"p must be a number in \[0, 1\], got True \(bool\)"),
    ({"p": torch.tensor(0.5)}, TypeError, r"p must be a number .* \(Tensor\)"),
    ({"generator": 0}, TypeError, r"generator must be a torch.Generator or None, got int; pass e.g. "
                                  r"torch.Generator\(\).manual_seed\(0\)"),
]


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("kwargs, error, message", COMMON_ARGS, ids=[str(a[0]) for a in COMMON_ARGS])
def test_common_constructor_arguments_are_checked(cls, kwargs, error, message):
    kw = {"num_classes": K, **kwargs}
    with pytest.raises(error, match=message):
        cls(**kw)


OWN_ARGS = [  # (class, kwargs, error, message)
    (SaliencyMix, {"alpha": "1"}, TypeError, r"alpha must be a number > 0, got '1' \(str\)"),
    (SaliencyMix, {"alpha": math.inf}, ValueError, r"alpha must be a number > 0, got inf"),
    (SnapMix, {"normalize": "yes"}, TypeError, r"normalize must be True or False, got 'yes'"),
    (AttentiveCutMix, {"grid": (2.5, 2)}, TypeError, r"grid\[0\] must be an int >= 1, got 2.5"),
    (AttentiveCutMix, {"grid": "7"}, TypeError, r"grid must be a positive int or an \(h, w\) pair"),
    (AttentiveCutMix, {"grid": (2, 2), "k": 1.0}, TypeError, r"k must be an int in \[1, 4\]"),
    (GuidedMixup, {"sigma": -1.0}, ValueError, r"sigma must be a number >= 0, got -1.0"),
    (GuidedMixup, {"eps": 0.0}, ValueError, r"eps must be a number > 0"),
    (SalientPaste, {"scale": (0.5, 0.1)}, ValueError,
     r"scale must be a \(min, max\) pair with min <= max, .*; swap them"),
    (SalientPaste, {"scale": 0.3}, TypeError, r"scale must be a \(min, max\) pair of numbers, got 0.3; pass e.g."),
    (SalientPaste, {"scale": (0.0, 0.5)}, ValueError, r"scale\[0\] must be a number in \(0, 1\], got 0.0"),
    (SalientPaste, {"zoom": (1.0, "2")}, TypeError, r"zoom\[1\] must be a number > 0, got '2'"),
    (SalientPaste, {"background": "zeros"}, ValueError,
     r"background must be one of \('image', 'constant', 'reflect'\)"),
    (SalientPaste, {"fill": math.inf}, ValueError, r"fill must be a number \(finite\), got inf"),
    (SalientCrop, {"size": (0, 8)}, ValueError, r"size\[0\] must be an int >= 1, got 0"),
    (SalientCrop, {"size": "8"}, TypeError, r"size must be a positive int or an \(h, w\) pair"),
    (SalientCrop, {"keep": 1.5}, ValueError, r"keep must be a number in \[0, 1\], got 1.5"),
    (SalientCrop, {"num_candidates": 2.0}, TypeError, r"num_candidates must be an int >= 1, got 2.0"),
    (KeepCutout, {"value": "noise"}, ValueError, r"value must be a number or 'random', got 'noise'"),
    (KeepCutout, {"value": math.nan}, ValueError, r"value must be a number \(finite\), got nan"),
    (KeepCutout, {"threshold": -0.1}, ValueError, r"threshold must be a number in \[0, 1\]"),
]


@pytest.mark.parametrize("cls, kwargs, error, message", OWN_ARGS,
                         ids=[f"{a[0].__name__}-{a[1]}" for a in OWN_ARGS])
def test_own_constructor_arguments_are_checked(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(K, **kwargs)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_second_positional_argument_is_refused(cls):
    with pytest.raises(TypeError, match="positional"):
        cls(K, 0.5)


# -- call-time inputs ---------------------------------------------------------------------------------------
def _nan_image(x, s, y):
    x = x.clone()
    x[2, 0, 3, 3] = math.nan
    return x, s, y


def _inf_image(x, s, y):
    x = x.clone()
    x[1, 1, 0, 0] = math.inf
    return x, s, y


def _nan_saliency(x, s, y):
    s = s.clone()
    s[0, 0, 5, 5] = math.nan
    return x, s, y


CALL_ERRORS = {  # name -> (bad input builder, error, message)
    "images-not-a-tensor": (lambda x, s, y: (x.tolist(), s, y), TypeError, r"images must be a torch.Tensor"),
    "images-3d": (lambda x, s, y: (x[0], s[0], y[:1]), ValueError,
                  r"\(B, C, H, W\), got \(3, 16, 16\) .*unsqueeze\(0\)"),
    "images-uint8": (lambda x, s, y: ((x * 255).to(torch.uint8), s, y), TypeError,
                     r"floating-point .* images.float\(\) / 255"),
    "images-bool": (lambda x, s, y: (x > 0.5, s, y), TypeError, r"floating-point"),
    "images-empty-batch": (lambda x, s, y: (x[:0], s[:0], y[:0]), ValueError, r"empty batch.*skip empty batches"),
    "images-no-pixels": (lambda x, s, y: (x[..., :0], s[..., :0], y), ValueError, r"no pixels"),
    "images-nan": (_nan_image, ValueError,
                   r"images contain NaN or inf values \(samples \[2\]\); fix the data pipeline"),
    "images-inf": (_inf_image, ValueError, r"images contain NaN or inf values \(samples \[1\]\)"),
    "saliency-nan": (_nan_saliency, ValueError, r"saliency contains NaN or inf values; .*nan_to_num"),
    "saliency-above-1": (lambda x, s, y: (x, s * 3, y), ValueError, r"\[0, 1\].*normalize_saliency"),
    "saliency-negative": (lambda x, s, y: (x, s - 1, y), ValueError, r"\[0, 1\].*normalize_saliency"),
    "saliency-uint8-mask": (lambda x, s, y: (x, (s > 0.5).to(torch.uint8), y), TypeError, r"saliency.float\(\)"),
    "saliency-3-channels": (lambda x, s, y: (x, s.expand(-1, 3, -1, -1), y), ValueError,
                            r"\(B, 1, H, W\) \(or \(B, H, W\)\), got \(4, 3, 16, 16\); average the channels"),
    "saliency-batch": (lambda x, s, y: (x, s[:3], y), ValueError,
                       r"saliency batch size 3 does not match images batch size 4"),
    "saliency-aspect": (lambda x, s, y: (x, s[..., :4, :], y), ValueError,
                        r"saliency of size 4x16 cannot be resized to images of 16x16 without distortion"),
    "saliency-aspect-larger": (lambda x, s, y: (x, torch.rand(4, 1, 64, 16), y), ValueError, r"without distortion"),
    "saliency-not-a-tensor": (lambda x, s, y: (x, s.tolist(), y), TypeError, r"saliency must be a torch.Tensor"),
    "labels-float-indices": (lambda x, s, y: (x, s, y.float()), TypeError, r"integer class indices.*labels.long\(\)"),
    "labels-B1-indices": (lambda x, s, y: (x, s, y[:, None]), TypeError, r"labels.squeeze\(1\)"),
    "labels-int-one-hot": (lambda x, s, y: (x, s, torch.eye(K, dtype=torch.long)[y]), TypeError, r"labels.float\(\)"),
    "labels-too-large": (lambda x, s, y: (x, s, torch.tensor([0, 1, 2, K])), ValueError,
                         r"label indices must lie in \[0, 3\] .*check the labels or the number of classes"),
    "labels-negative": (lambda x, s, y: (x, s, torch.tensor([0, -1, 2, 3])), ValueError, r"label indices must lie in"),
    "labels-rows-not-summing-to-1": (lambda x, s, y: (x, s, torch.full((4, K), 0.5)), ValueError,
                                     r"each row must sum to 1; normalise them"),
    "labels-negative-probabilities": (lambda x, s, y: (x, s, torch.tensor([[1.5, -0.5, 0, 0]] * 4)), ValueError,
                                      r"finite and non-negative.*softmax"),
    "labels-nan": (lambda x, s, y: (x, s, torch.full((4, K), math.nan)), ValueError, r"finite and non-negative"),
    "labels-batch": (lambda x, s, y: (x, s, y[:3]), ValueError, r"labels must have batch size 4 .*one label per image"),
    "labels-classes": (lambda x, s, y: (x, s, torch.eye(K + 1)[y]), ValueError,
                       r"labels have 5 classes but num_classes=4"),
    "labels-3d": (lambda x, s, y: (x, s, torch.eye(K)[y][:, None]), ValueError,
                  r"labels must have shape \(B,\) or \(B, K\)"),
    "labels-list": (lambda x, s, y: (x, s, y.tolist()), TypeError, r"labels must be a torch.Tensor"),
}


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("case", list(CALL_ERRORS))
def test_bad_call_inputs_raise_clear_errors(cls, case):
    build, error, message = CALL_ERRORS[case]
    with pytest.raises(error, match=message):
        make(cls)(*build(*batch()))


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_bad_call_options(cls):
    x, s, y = batch()
    with pytest.raises(TypeError, match=r"num_classes must be an int >= 1, got '4' \(str\)"):
        make(cls, num_classes=None)(x, s, y, num_classes="4")
    with pytest.raises(ValueError, match="integer labels need num_classes"):
        make(cls, num_classes=None)(x, s, y)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        make(cls)(x, s, y, generator=0)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_bad_params(cls):
    x, s, y = batch()
    t = make(cls)
    _, params = t(x, s, y, return_params=True)
    with pytest.raises(TypeError, match="params must be the dict returned by a call"):
        t(x, s, y, params=list(params.values()))
    with pytest.raises(ValueError, match=r"missing \['applied'\]"):
        t(x, s, y, params={k: v for k, v in params.items() if k != "applied"})
    with pytest.raises(ValueError, match=r"params\['applied'\] is torch.float32 .* expected bool"):
        t(x, s, y, params={**params, "applied": params["applied"].float()})
    with pytest.raises(TypeError, match=r"params\['applied'\] must be a tensor"):
        t(x, s, y, params={**params, "applied": [True] * 4})


# -- inputs that are valid, if unusual: a correct result -----------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_unusual_but_valid_inputs_give_correct_results(cls):
    x, s, y = batch()
    ref, _ = make(cls)(x, s, y, return_params=True)
    # (B, H, W) saliency is (B, 1, H, W)
    out = make(cls)(x, s[:, 0], y)
    assert torch.equal(out.images, ref.images) and torch.equal(out.labels, ref.labels)
    # a lower-resolution map of the same aspect (a feature map) is resized, one of odd size too
    for small in ((4, 4), (5, 5), (1, 1)):
        low = torch.rand(4, 1, *small)
        out = make(cls)(x, low, y)
        assert out.saliency.shape == (4, 1, 16, 16) and torch.isfinite(out.labels).all()
    # one-element batch: a correct, finite result with rows summing to 1
    one = make(cls)(x[:1], s[:1], y[:1])
    assert one.images.shape == (1, 3, 16, 16) and torch.allclose(one.labels.sum(1), torch.ones(1))
    # huge (finite) pixel values pass through unchanged where not mixed
    big = make(cls, p=0.0)(x * 1e30, s, y)
    assert torch.equal(big.images, x * 1e30)
    # saliency of the images' size in float64 / float16 is accepted as float32
    for dt in (torch.float64, torch.float16):
        out = make(cls)(x, s.to(dt), y)
        assert out.saliency.dtype == torch.float32


def test_value_checks_off_skip_nan_checks():
    x, s, y = batch()
    x[0, 0, 0, 0] = math.nan
    set_value_checks("never")
    try:
        out = make(SaliencyMix)(x, s, y)  # no check, no sync: NaN passes through, labels stay finite
    finally:
        set_value_checks("cpu")
    assert torch.isfinite(out.labels).all()
    with pytest.raises(ValueError, match="'cpu', 'always' or 'never'"):
        set_value_checks("sometimes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_saliency_and_labels_on_another_device_are_moved(cls):
    x, s, y = batch()
    ref = make(cls)(x, s, y)
    out = cls(num_classes=K, generator=torch.Generator().manual_seed(0),
              **({"grid": (4, 4), "k": 4} if cls is AttentiveCutMix else {}))(x.cuda(), s, y)
    assert out.images.device.type == "cuda" and out.saliency.device.type == "cuda"
    assert out.labels.device.type == "cuda"
    torch.testing.assert_close(out.labels.cpu(), ref.labels)


# -- params replayed on a transform whose options change what the replay does --------------------------------
@pytest.mark.parametrize("sampled, replayed, option", [
    (lambda: PuzzleMix(K, p=1.0, transport=True), lambda: PuzzleMix(K, transport=False), "transport=True"),
    (lambda: PuzzleMix(K, p=1.0), lambda: PuzzleMix(K, transport=True), "transport=False"),
    (lambda: AttentiveCutMix(K, grid=(2, 8), k=4), lambda: AttentiveCutMix(K, grid=(4, 4), k=4), r"grid=\(2, 8\)"),
    (lambda: SalientPaste(K, background="reflect"), lambda: SalientPaste(K, background="constant"),
     "background='reflect'"),
    (lambda: SalientPaste(K), lambda: SalientPaste(K, interpolation="nearest"), "interpolation='bilinear'"),
    (lambda: SalientPaste(K, background="constant", fill=0.0), lambda: SalientPaste(K, background="constant",
                                                                                   fill=1.0), "fill=0.0"),
    (lambda: SalientCrop(K, size=8), lambda: SalientCrop(K, size=(8, 8)), None),  # equal options: accepted
    (lambda: SalientCrop(K, size=8), lambda: SalientCrop(K, size=12), r"size=\(8, 8\)"),
    (lambda: KeepCutout(K, value=0.0), lambda: KeepCutout(K, value=1.0), "value=0.0"),
], ids=["puzzle-transport", "puzzle-no-transport", "cells-grid", "paste-background", "paste-interpolation",
        "paste-fill", "crop-same-size", "crop-size", "cutout-value"])
def test_replay_under_options_that_change_the_output_is_refused_naming_the_option(sampled, replayed, option):
    x, s, y = batch()
    _, params = sampled()(x, s, y, return_params=True, generator=torch.Generator().manual_seed(1))
    if option is None:
        replayed()(x, s, y, params=params)
        return
    with pytest.raises(ValueError, match=rf"sampled by \w+\({option}\) but this \w+ has .* replay them on a \w+ "
                                         rf"with {option}"):
        replayed()(x, s, y, params=params)
    if option != "transport=False":  # (that replay lacks the "sources" key)
        replayed()(x, s, y, params=dict(params))  # a plain dict has no record: keys, dtypes and shapes checked
