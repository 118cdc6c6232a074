"""SaliencyAugmenter: the Lightning-free per-batch augmenter (timm ``mixup_fn`` call shape)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salaug
from salaug.augmenter import AugmenterRecord, SaliencyAugmenter
from salaug.ema import ModelEMA
from salaug.transforms.base import SaliencyTransform

K = 4


def net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    )
    model.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, K))
    return model


def batch(n: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % K


def make(model: nn.Module | None = None, transform: SaliencyTransform | None = None, **kw) -> SaliencyAugmenter:
    kw.setdefault("seed", 0)
    kw.setdefault("target_layer", "features")
    model = model if model is not None else net()
    return SaliencyAugmenter(model, transform or salaug.SaliencyMix(num_classes=K, p=1.0), **kw)


def is_flat(s: torch.Tensor) -> bool:
    flat = s.flatten(1)
    return bool((flat.amax(1) - flat.amin(1)).le(1e-6).all())


# -- the call ---------------------------------------------------------------------------------------
def test_call_shape_and_soft_labels():
    aug = make()
    x, y = batch()
    images, soft = aug(x, y)
    assert images.shape == x.shape and images.dtype == x.dtype
    assert soft.shape == (8, K) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert (soft.max(1).values < 1).any()  # real mixes
    assert images.ne(x).flatten(1).any(1).float().mean() > 0.5
    record = aug.last
    assert isinstance(record, AugmenterRecord) and record.augmented and not record.warmup and record.step == 0
    assert record.output is not None and torch.equal(record.output.images, images)
    assert record.saliency is not None and record.saliency.shape == (8, 1, 16, 16)
    assert record.params is not None and record.params["applied"].shape == (8,)
    assert (aug.steps, aug.augmented) == (1, 1)


def test_soft_label_input_and_timm_style_loop():
    model = net()
    aug = make(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        x, y = batch(seed=step)
        soft_in = F.one_hot(y, K).float()
        x, target = aug(x, soft_in)  # as timm: x, target = mixup_fn(x, target)
        loss = torch.sum(-target * F.log_softmax(model(x), dim=-1), dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert target.shape == (8, K) and torch.isfinite(loss)
    assert aug.steps == 3


def test_num_classes_inferred_from_the_model():
    aug = make(transform=salaug.SaliencyMix())
    assert aug.num_classes is None
    _, soft = aug(*batch())
    assert aug.num_classes == K and soft.shape == (8, K)


def test_batch_p_per_batch():
    aug = make(batch_p=0.0)
    x, y = batch()
    images, soft = aug(x, y)
    assert images is x and torch.equal(soft, F.one_hot(y, K).float())
    assert aug.last is not None and not aug.last.augmented and aug.last.output is None
    half = make(batch_p=0.5, seed=3)
    flags = []
    for i in range(20):
        half(*batch(seed=i))
        assert half.last is not None
        flags.append(half.last.augmented)
    assert 0 < sum(flags) < 20 and sum(flags) == half.augmented and half.steps == 20
    again = make(batch_p=0.5, seed=3)
    assert [again(*batch(seed=i)) and again.last.augmented for i in range(20)] == flags  # type: ignore[union-attr]


@pytest.mark.parametrize("options", [dict(targets="predicted"), dict(cam_scale=0.5)])
def test_predicted_targets_and_cam_scale(options):
    aug = make(**options)
    aug(*batch())
    assert aug.last is not None and aug.last.saliency is not None
    assert aug.last.saliency.shape == (8, 1, 16, 16) and not is_flat(aug.last.saliency)


def test_predicted_targets_take_the_cam_of_the_prediction_not_of_the_label():
    model = net()
    x, _ = batch()
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
    model.train()
    labels = (predicted + 1) % K  # every label differs from the prediction
    aug = make(model, targets="predicted")
    aug(x, labels)
    used = aug.last.saliency  # type: ignore[union-attr]
    torch.testing.assert_close(used, salaug.GradCAM(model, "features")(x, None))
    label_maps = salaug.GradCAM(model, "features")(x, labels)
    assert (used - label_maps).abs().flatten(1).amax(1).gt(0.1).all()  # each map differs from its label's


def test_automatic_target_layer():
    aug = make(target_layer=None)
    assert aug.source.cam is None
    aug(*batch())
    assert aug.source.cam is not None and aug.source.cam.target_layer_name == "features"


def test_wrapped_models_give_the_same_maps():
    model = net().eval()
    x, y = batch()
    plain = make(model)
    plain(x, y)
    for wrapped in (torch.compile(model, backend="eager"), nn.DataParallel(model)):
        aug = make(wrapped)
        aug(x, y)
        torch.testing.assert_close(aug.last.saliency, plain.last.saliency)  # type: ignore[union-attr]


# -- warm-up and caller-given saliency -------------------------------------------------------------
def test_warmup_feeds_flat_saliency_then_cams():
    calls = []

    class Spy(SaliencyAugmenter):
        def compute_saliency(self, images, labels):
            calls.append(self.steps)
            return super().compute_saliency(images, labels)

    aug = Spy(net(), salaug.SnapMix(num_classes=K), target_layer="features", seed=0, warmup_steps=2,
              labels_from="cam")
    flat_ref = make(transform=salaug.SnapMix(num_classes=K))
    for i in range(3):
        x, y = batch(seed=i)
        images, soft = aug(x, y)
        record = aug.last
        assert record is not None
        if i < 2:
            assert record.warmup and record.saliency is None  # flat: the box mix reads no map
            # the same as the transform fed flat saliency by the caller: random placement, area labels
            ref_images, ref_soft = flat_ref(x, y, saliency=torch.ones(8, 1, 16, 16))
            torch.testing.assert_close(images, ref_images)
            torch.testing.assert_close(soft, ref_soft)
        else:
            assert not record.warmup and record.saliency is not None and not is_flat(record.saliency)
    assert calls == [3]  # no CAM during warm-up (compute_saliency runs after the step counter moved)
    assert aug.in_warmup(0) and not aug.in_warmup()


def test_warmup_area_labels_for_snapmix():
    # SnapMix's labels come from saliency mass; flat maps fall back to the pasted (destination) area.
    aug = make(transform=salaug.SnapMix(num_classes=K), warmup_steps=1)
    x, y = batch()
    _, soft = aug(x, y)
    params = aug.last.params  # type: ignore[union-attr]
    box = params["dst_boxes"]
    area = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).float() / (16 * 16)
    share = torch.where(params["applied"], area, torch.zeros_like(area))
    expected = F.one_hot(y, K).float().lerp(F.one_hot(y[params["perm"]], K).float(), share.unsqueeze(1))
    torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)


class CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = net()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_given_saliency_skips_the_cam():
    model = CountingNet()
    aug = SaliencyAugmenter(model, salaug.SaliencyMix(num_classes=K), target_layer="inner.features", seed=0)
    x, y = batch()
    masks = torch.zeros(8, 1, 16, 16)
    masks[:, :, 4:8, 4:8] = 1.0
    images, soft = aug(x, y, saliency=masks)
    assert model.calls == 1  # the first call's one-image probe (num_classes check), no CAM forward
    assert aug.last is not None and aug.last.saliency is masks
    ref = salaug.SaliencyMix(num_classes=K)
    # the box sits around the mask's peak: same output as the transform called with these masks
    twin = SaliencyAugmenter(CountingNet(), ref, target_layer="inner.features", seed=0)
    images2, soft2 = twin(x, y, saliency=masks)
    torch.testing.assert_close(images, images2)
    torch.testing.assert_close(soft, soft2)
    aug(x, y, saliency=masks)
    assert model.calls == 1
    aug(x, y)  # without saliency=: the CAM layer's probe and the CAM forward
    assert model.calls >= 3


# -- the random stream -------------------------------------------------------------------------------
def run(aug: SaliencyAugmenter, start: int, stop: int):
    return [aug(*batch(seed=i)) for i in range(start, stop)]


@pytest.mark.parametrize("ema_decay", [None, 0.5])
def test_state_dict_resume_gives_the_same_stream(ema_decay):
    model = net()
    full = make(model, batch_p=0.7, seed=5, ema_decay=ema_decay)
    outputs = run(full, 0, 5)
    model2 = net()
    first = make(model2, batch_p=0.7, seed=5, ema_decay=ema_decay)
    run(first, 0, 2)
    state = copy.deepcopy(first.state_dict())
    assert state["steps"] == 2 and ("ema" in state) == (ema_decay is not None)
    resumed = make(net(), batch_p=0.7, seed=999, ema_decay=ema_decay)
    resumed.load_state_dict(state)
    assert resumed.seed == 5
    for (a_img, a_lab), (b_img, b_lab) in zip(outputs[2:], run(resumed, 2, 5)):
        torch.testing.assert_close(a_img, b_img)
        torch.testing.assert_close(a_lab, b_lab)
    assert not torch.equal(outputs[0][0], outputs[1][0])


def test_seed_none_follows_torch_manual_seed():
    model = net()
    torch.manual_seed(123)
    a = make(model, seed=None)
    torch.manual_seed(123)
    b = make(model, seed=None)
    assert a.seed == b.seed == 123


def test_per_rank_streams(monkeypatch):
    outs = {}
    for rank in (0, 1):
        aug = make(rank=rank)
        assert aug.rank == rank
        outs[rank] = aug(*batch())
    assert not torch.equal(outs[0][0], outs[1][0])
    # without rank=: the torch.distributed rank
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    aug = make()
    assert aug.rank == 1
    images, _ = aug(*batch())
    torch.testing.assert_close(images, outs[1][0])


def test_transform_generator_is_not_swapped():
    seen = []

    class Spy(salaug.SaliencyMix):
        def forward(self, *args, **kwargs):
            seen.append((self.generator, kwargs.get("generator")))
            return super().forward(*args, **kwargs)

    aug = make(transform=Spy(num_classes=K))
    aug(*batch())
    own, passed = seen[0]
    assert own is None and isinstance(passed, torch.Generator)  # generator given at call time


# -- side effects --------------------------------------------------------------------------------------
def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "params": [id(p) for p in model.parameters()],
    }


@pytest.mark.parametrize("options", [dict(cam="gradcam"), dict(cam="eigencam"), dict(cam="gradcam++", cam_scale=0.5),
                                     dict(cam="gradcam", target_layer=None), dict(cam="gradcam", ema_decay=0.9),
                                     dict(cam="gradcam", warmup_steps=1)])
def test_no_side_effects_on_the_model(options):
    model = net()
    model.features[1].eval()  # a mixed mode must survive
    F.cross_entropy(model(batch()[0]), batch()[1]).backward()  # grads mid-accumulation
    before = snapshot(model)
    aug = make(model, **options)
    grad_mode = torch.is_grad_enabled()
    for i in range(3):
        aug(*batch(seed=i))
    after = snapshot(model)
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"{k} changed"
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert g0 is not None and g1 is not None and torch.equal(g0, g1)
    for key in ("requires_grad", "modes", "hooks", "params"):
        assert before[key] == after[key], key
    assert torch.is_grad_enabled() == grad_mode


# -- EMA ---------------------------------------------------------------------------------------------
def test_ema_weights_and_cams():
    model = net()
    aug = make(model, ema_decay=0.5)
    x, y = batch()
    aug(x, y)
    ema = aug.source.ema_model
    assert ema is not None and ema is not model
    assert all(not p.requires_grad for p in ema.parameters())
    w0 = model.head[3].weight.detach().clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
        model.features[1].running_mean.add_(1.0)
    aug(x, y)
    torch.testing.assert_close(ema.head[3].weight, w0 + 0.25)  # 0.5 * w0 + 0.5 * (w0 + 0.5)
    torch.testing.assert_close(ema.features[1].running_mean, model.features[1].running_mean)  # buffers copied
    # the maps of this call came from the EMA copy, not from the live weights
    record = aug.last
    assert record is not None and record.saliency is not None
    ema_maps = salaug.GradCAM(ema, "features")(x, y)
    live_maps = salaug.GradCAM(model, "features")(x, y)
    torch.testing.assert_close(record.saliency, ema_maps)
    assert not torch.allclose(record.saliency, live_maps)


def test_model_ema_first_update_copies_then_averages_parameters_and_copies_buffers():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(0.75)
    assert ema.module is None and ema.state_dict() is None
    ema.update(model)
    copy_ = ema.module
    assert copy_ is not None and copy_ is not model and not copy_.training
    assert all(not p.requires_grad for p in copy_.parameters()) and all(p.requires_grad for p in model.parameters())
    for k, v in copy_.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(batch()[0])  # train mode: BatchNorm statistics and the batch counter move
    ema.update(model)
    assert ema.module is copy_  # one copy, updated in place
    torch.testing.assert_close(copy_.head[3].weight, before["head.3.weight"] + 0.25)  # 0.75 w + 0.25 (w + 1)
    torch.testing.assert_close(copy_.features[0].bias, before["features.0.bias"] + 0.25)
    for name in ("features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"):
        assert torch.equal(copy_.state_dict()[name], model.state_dict()[name]), name  # copied, not averaged
    assert int(copy_.features[1].num_batches_tracked) == 1


@pytest.mark.parametrize("other", [lambda: nn.Linear(3, 2), lambda: nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))])
def test_model_ema_update_with_another_architecture_names_it_and_keeps_the_average(other):
    ema = ModelEMA(0.5)
    ema.update(nn.Sequential(nn.Linear(2, 1)))
    assert ema.module is not None
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with pytest.raises(ValueError, match=r"ModelEMA.update: \w+ is not the architecture the average was copied "
                                         r"from \(.*(missing|unexpected|shape of).*\); use one ModelEMA per model"):
        ema.update(other())
    after = ema.module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # untouched


def test_model_ema_state_dict_round_trip():
    model = net()
    first = ModelEMA(0.5)
    first.update(model)
    with torch.no_grad():
        model.head[3].weight.mul_(3.0)
    first.update(model)
    state = first.state_dict()
    assert state is not None and state["head.3.weight"] is not first.module.head[3].weight  # a copy
    resumed = ModelEMA(0.5)
    resumed.load_state_dict(state, model)
    assert resumed.module is None and resumed.state_dict() is not None  # waits for the copy
    for ema in (first, resumed):
        ema.update(model)  # the resumed copy starts from the loaded weights, then averages
    for k, v in first.module.state_dict().items():  # type: ignore[union-attr]
        torch.testing.assert_close(resumed.module.state_dict()[k], v, msg=k)  # type: ignore[union-attr]
    later = ModelEMA(0.5)
    later.update(model)
    later.load_state_dict(state)  # into an existing copy
    torch.testing.assert_close(later.module.head[3].weight, state["head.3.weight"])  # type: ignore[union-attr]


def test_model_ema_refuses_weights_of_another_architecture_and_bad_decays():
    state = {k: v[:1] if v.ndim else v for k, v in net().state_dict().items()}
    with pytest.raises(ValueError, match=r"state_dict\['ema'\].*does not fit the model Sequential.*shape of"):
        ModelEMA(0.9).load_state_dict(state, net(), "SaliencyAugmenter")
    waiting = ModelEMA(0.9)
    waiting.load_state_dict(state)  # no model to check against yet
    with pytest.raises(ValueError, match="another architecture"):
        waiting.check(net())
    with pytest.raises(TypeError, match="state dict"):
        ModelEMA(0.9).load_state_dict([1, 2], net())  # type: ignore[arg-type]
    for decay, error in ((1.0, ValueError), (0.0, ValueError), ("0.9", TypeError), (None, TypeError)):
        with pytest.raises(error, match="ema_decay"):
            ModelEMA(decay)  # type: ignore[arg-type]


def test_model_ema_names_a_model_that_cannot_be_copied():
    class Uncopyable(nn.Linear):
        def __deepcopy__(self, memo):
            raise RuntimeError("holds a file handle")

    with pytest.raises(RuntimeError, match=r"copy.deepcopy\(Uncopyable\) failed: holds a file handle.*ema_decay=None"):
        ModelEMA(0.9).update(Uncopyable(2, 2))


def test_ema_with_cam_object_is_refused():
    model = net()
    with pytest.raises(ValueError, match="cam='gradcam'"):
        SaliencyAugmenter(model, salaug.SaliencyMix(num_classes=K), salaug.GradCAM(model, "features"), ema_decay=0.9)


# -- errors -----------------------------------------------------------------------------------------
def test_num_classes_mismatch_is_reported_on_the_first_batch():
    aug = make(transform=salaug.SaliencyMix(num_classes=5))
    with pytest.raises(ValueError, match=r"num_classes.*is 5 but the model outputs 4 classes.*num_classes=4"):
        aug(*batch())
    with pytest.raises(ValueError, match="num_classes= is 3 but the model outputs 4"):
        make(num_classes=3)(*batch())


def test_nan_images_are_named():
    x, y = batch()
    x[1, 0, 2, 3] = float("nan")
    x[5, 2] = float("inf")
    with pytest.raises(ValueError, match=r"images contain NaN or inf values \(samples \[1, 5\]\)"):
        make()(x, y)


@pytest.mark.parametrize("labels, error, match", [
    (torch.zeros(8, 1, dtype=torch.long), ValueError, r"squeeze\(1\)"),
    (torch.zeros(7, dtype=torch.long), ValueError, "B=8"),
    (torch.zeros(8, 2, 2), ValueError, r"\(B,\) or \(B, K\)"),
    (torch.zeros(8), TypeError, r"labels.long\(\)"),
    (torch.zeros(8, K, dtype=torch.long), TypeError, r"labels.float\(\)"),
    ([0] * 8, TypeError, "torch.as_tensor"),
    (torch.full((8,), 7), ValueError, "label indices must lie in"),
])
def test_bad_labels(labels, error, match):
    with pytest.raises(error, match=match):
        make()(batch()[0], labels)


def test_cam_scale_too_small_for_the_network():
    # features: one 2x downsampling. 8x8 images at cam_scale 0.25 are 2x2 CAM inputs: 1x1 maps.
    with pytest.raises(ValueError, match=r"cam_scale=0.25 the 8x8 images become 2x2 CAM inputs.*'features' "
                                         r"outputs a 1x1 feature map.*Raise cam_scale"):
        make(cam_scale=0.25)(*batch(size=8))
    # 4x4 at 0.25: a 1x1 input the network cannot even run
    with pytest.raises(ValueError, match=r"model failed on the 1x1 CAM input that cam_scale=0.25.*raise cam_scale"):
        make(cam_scale=0.25)(*batch(size=4))
    with pytest.raises(ValueError, match="shrinks the 4x4 images to nothing"):
        make(cam_scale=0.1)(*batch(size=4))
    make(cam_scale=0.5)(*batch(size=16))  # 8x8 input, 4x4 maps: fine
    make(cam_scale=0.25)(*batch(size=8), saliency=torch.rand(8, 1, 8, 8))  # no CAM: nothing to check


def test_cam_scale_check_picks_the_layer_at_full_size():
    # Automatic layer: chosen on full-size images ("features", 2x2 at 4x4), then found to be 1x1 at
    # cam_scale 0.5, instead of silently falling back to an earlier layer at the small size.
    aug = make(target_layer=None, cam_scale=0.5)
    with pytest.raises(ValueError, match="target layer 'features' outputs a 1x1 feature map"):
        aug(*batch(size=4))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(batch_p="0.5"), TypeError, r"batch_p must be a number in \[0, 1\]"),
    (dict(batch_p=1.5), ValueError, r"batch_p must be a number in \[0, 1\]"),
    (dict(batch_p=True), TypeError, "batch_p must be"),
    (dict(cam_scale=0.0), ValueError, r"cam_scale must be a number in \(0, 1\]"),
    (dict(cam_scale=float("nan")), ValueError, "cam_scale must be"),
    (dict(targets="logits"), ValueError, "targets must be one of"),
    (dict(num_classes=2.5), TypeError, "num_classes must be an int"),
    (dict(num_classes=0), ValueError, "num_classes must be an int >= 1"),
    (dict(seed="1"), TypeError, "seed"),
    (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    (dict(warmup_steps=1.5), TypeError, "warmup_steps"),
    (dict(ema_decay=1.0), ValueError, "ema_decay"),
    (dict(rank=-1), ValueError, "rank"),
    (dict(target_layer="nope"), ValueError, "not a submodule"),
    (dict(cam="nocam"), ValueError, "unknown CAM method"),
])
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_constructor_types():
    with pytest.raises(TypeError, match="nn.Module"):
        SaliencyAugmenter(lambda x: x, salaug.SaliencyMix(num_classes=K))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="salaug transform"):
        SaliencyAugmenter(net(), lambda *a: a)  # type: ignore[arg-type]


def test_repr():
    assert repr(make(ema_decay=0.9)) == (
        "SaliencyAugmenter(SaliencyMix, source=LiveCAM(cam='gradcam', target_layer='features', cam_scale=1.0, "
        "ema_decay=0.9), batch_p=1.0, warmup_steps=0)"
    )


def test_lazy_export():
    assert salaug.SaliencyAugmenter is SaliencyAugmenter


# -- one p: per sample, in the transform --------------------------------------------------------------
def test_defaults_send_every_batch_to_the_transform_with_its_own_p():
    # Nothing set but the transform's num_classes: every batch reaches the transform, and its own
    # per-sample p decides which images are mixed.
    transform = salaug.SnapMix(num_classes=K)
    aug = SaliencyAugmenter(net(), transform, seed=0, labels_from="cam")
    assert aug.batch_p == 1.0
    applied = []
    for i in range(12):
        aug(*batch(seed=i))
        assert aug.last is not None and aug.last.augmented and aug.last.params is not None
        applied.append(aug.last.params["applied"].float())
    rate = torch.cat(applied).mean().item()
    assert transform.p < 1.0  # the per-sample default; an ignored p would mix every image
    assert abs(rate - transform.p) < 0.2, (rate, transform.p)  # 96 Bernoulli draws: sd <= 0.05
    assert aug.augmented == aug.steps == 12


def test_p_is_a_deprecated_name_of_batch_p():
    with pytest.warns(DeprecationWarning, match="batch_p"):
        aug = make(p=0.25)
    assert aug.batch_p == 0.25
    with pytest.warns(DeprecationWarning, match="batch_p"):
        assert aug.p == 0.25
    with pytest.warns(DeprecationWarning, match="batch_p"):
        aug.p = 0.0  # timm-style switch-off still works
    images, soft = aug(*batch())
    assert aug.batch_p == 0.0 and aug.last is not None and not aug.last.augmented
    with pytest.raises(ValueError, match="both p=0.5 and batch_p=0.3"):
        make(p=0.5, batch_p=0.3)
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
        make(p=1.5)


def test_targets_label_is_the_deprecated_spelling_of_labels():
    with pytest.warns(DeprecationWarning, match="targets='labels'"):
        aug = make(targets="label")
    assert aug.source.targets == "labels"
    torch.testing.assert_close(aug(*batch())[1], make(targets="labels")(*batch())[1])
