"""The demo: the transform registry it builds from, its arms, its statistics and its report."""

from __future__ import annotations

import inspect

import pytest

import salaug.transforms
from salaug.transforms import (
    AttentiveCutMix,
    GuidedMixup,
    KeepCutout,
    PuzzleMix,
    ResizeMix,
    SaliencyMix,
    SalientCrop,
    SalientPaste,
    SnapMix,
)
from salaug.transforms.registry import SALIENCY_FREE, TRANSFORM_NAMES, TRANSFORMS, create_transform


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls", "defaults"), [
    ("saliencymix", SaliencyMix, {}), ("snapmix", SnapMix, {}), ("guidedmixup", GuidedMixup, {}),
    ("salientpaste", SalientPaste, {}), ("attentivecutmix", AttentiveCutMix, {}), ("puzzlemix", PuzzleMix, {}),
    ("cutmix", SaliencyMix, {}), ("resizemix", ResizeMix, {}),
    ("salientcrop", SalientCrop, {"p": 0.5}), ("keepcutout", KeepCutout, {"p": 0.5}),
])
def test_each_name_builds_its_class_with_the_library_defaults(name, cls, defaults) -> None:
    built = create_transform(name, 10)
    assert type(built) is cls and repr(built) == repr(cls(num_classes=10, **defaults))


def test_options_override_the_defaults_of_a_name() -> None:
    crop = create_transform("salientcrop", 4, p=1.0, keep=0.5)
    assert repr(crop) == repr(SalientCrop(num_classes=4, p=1.0, keep=0.5))
    assert create_transform("puzzlemix", 4, transport=True).transport is True


def test_names_cover_every_transform_and_say_which_read_no_saliency() -> None:
    assert TRANSFORM_NAMES[-1] == "none" and set(TRANSFORM_NAMES) == {*TRANSFORMS, "none"}
    assert SALIENCY_FREE == ("cutmix", "resizemix")
    assert create_transform("none") is None
    exported = {c for _, c in inspect.getmembers(salaug.transforms, inspect.isclass)}
    concrete = {c for c in exported if c.__module__.split(".")[-1] in ("crop", "erase", "mix", "paste", "puzzle")
                and not c.__name__.startswith("_")}
    assert concrete == {spec.cls for spec in TRANSFORMS.values()}  # every transform has a name


@pytest.mark.parametrize(("call", "match"), [
    (lambda: create_transform("magic", 10), r"unknown transform 'magic'; choose one of saliencymix, .*none"),
    (lambda: create_transform("guidedmixup", 10, labels="area"),
     r"'guidedmixup' \(GuidedMixup\) has no option labels; its options are .*sigma"),
    (lambda: create_transform("snapmix", 10, speed=2, colour=1), "has no option colour, speed"),
    (lambda: create_transform("none", p=0.5), "transform 'none' takes no options"),
])
def test_bad_names_and_options_are_refused_with_the_choices(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()
