"""Forward labels: soft labels of a mixed batch filled by the user's own forward of it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import salaug
from salaug.forward_labels import ForwardLabels, pasted_region, supports_forward_labels
from salaug.models import DemoNet
from salaug.transforms.labels import evidence_share, mix_soft_labels


class MaskNet(nn.Module):
    """A model whose CAM for class c is exactly input channel c (identity 1x1 conv, GAP + identity linear)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(k, k, 1, bias=False)  # identity weights, trainable like a real trunk
        self.head = nn.Linear(k, k, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(k).view(k, k, 1, 1))
            self.head.weight.copy_(torch.eye(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        return self.head(a.mean((2, 3)))


def object_images(b: int, k: int, size: int = 16, side: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i shows one square object of class i % k, drawn in channel i % k, same size for all."""
    labels = torch.arange(b) % k
    x = torch.zeros(b, k, size, size)
    for i in range(b):
        top, left = (3 * i) % (size - side), (5 * i) % (size - side)
        x[i, labels[i], top:top + side, left:left + side] = 1.0
    return x, labels


def mixed_batch(transform, x, labels, k, seed=0):
    soft = F.one_hot(labels, k).float()
    flat = torch.ones(x.shape[0], 1, *x.shape[-2:])
    out, params = transform(x, flat, soft, return_params=True, generator=torch.Generator().manual_seed(seed))
    area = transform.area_share(params, x.shape[-2:]) * params["applied"]
    return soft, out, params, area


@pytest.mark.parametrize("transform", [salaug.SnapMix(num_classes=4, p=1.0), salaug.SaliencyMix(num_classes=4, p=1.0),
                                       salaug.ResizeMix(num_classes=4, p=1.0)])
def test_labels_from_true_mask_cams_are_the_visible_object_shares(transform):
    k = 4
    net = MaskNet(k)
    x, labels = object_images(8, k)
    soft, out, params, area = mixed_batch(transform, x, labels, k)
    fwd = ForwardLabels(net, "features", blend=1.0)
    y = out.labels
    fwd.arm(out.images, y, soft, params, area)
    assert fwd.pending
    net(out.images)
    assert not fwd.pending
    # what each mixed image shows: pixels of its own object outside the box, of the partner's inside it
    region = pasted_region(params, x.shape[-2:])[:, 0]
    own = out.images[torch.arange(8), labels]
    partner = out.images[torch.arange(8), labels[params["perm"]]]
    vis_own, vis_partner = (own * (1 - region)).sum((1, 2)), (partner * region).sum((1, 2))
    share = torch.where(vis_own + vis_partner > 0, vis_partner / (vis_own + vis_partner), area)
    expected = mix_soft_labels(soft, params["perm"], share * params["applied"])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(y, mix_soft_labels(soft, params["perm"], area))


def test_blend_mixes_evidence_and_area():
    own, partner = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    region = torch.zeros(3, 4, 4)
    region[:, :2, :2] = 1
    area = torch.full((3,), 0.25)
    e = evidence_share(own, partner, region, area, 1.0)
    torch.testing.assert_close(evidence_share(own, partner, region, area, 0.5), 0.5 * e + 0.125)
    torch.testing.assert_close(evidence_share(own, partner, region, area, 0.0), area)


def test_no_evidence_or_nan_falls_back_to_area():
    region = torch.zeros(2, 2, 2)
    region[:, 0, 0] = 1
    area = torch.tensor([0.25, 0.25])
    zero = torch.zeros(2, 2, 2)
    nan = torch.full((2, 2, 2), float("nan"))
    torch.testing.assert_close(evidence_share(zero, zero, region, area, 1.0), area)
    torch.testing.assert_close(evidence_share(nan, nan, region, area, 0.7), area)


def counting(model):
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


def test_one_forward_per_step_and_no_hooks_left():
    torch.manual_seed(0)
    net = DemoNet(num_classes=5, width=8)
    calls = counting(net)
    fwd = ForwardLabels(net, "features")
    t = salaug.SnapMix(num_classes=5, p=1.0)
    x, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 5
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    soft, out, params, area = mixed_batch(t, x, labels, 5)
    fwd.arm(out.images, out.labels, soft, params, area)
    loss = F.cross_entropy(net(out.images), out.labels)
    loss.backward()
    assert len(calls) == 1
    hooks_after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    assert hooks_after == hooks_before
    torch.testing.assert_close(out.labels.sum(1), torch.ones(6))


def test_labels_do_not_touch_grads_or_change_the_backward():
    torch.manual_seed(0)
    net = DemoNet(num_classes=5, width=8)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    x, labels = torch.rand(6, 3, 32, 32), torch.arange(6) % 5
    soft, out, params, area = mixed_batch(t, x, labels, 5)
    fwd = ForwardLabels(net, "features")
    fwd.arm(out.images, out.labels, soft, params, area)
    logits = net(out.images)
    assert all(p.grad is None for p in net.parameters())
    F.cross_entropy(logits, out.labels).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(out.images), out.labels.clone()).backward()  # same labels, no hooks
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_automatic_layer_is_chosen_in_the_armed_forward():
    net = DemoNet(num_classes=5, width=8)
    fwd = ForwardLabels(net)
    assert fwd.kind == "auto"
    t = salaug.SnapMix(num_classes=5, p=1.0)
    soft, out, params, area = mixed_batch(t, torch.rand(4, 3, 32, 32), torch.arange(4), 5)
    fwd.arm(out.images, out.labels, soft, params, area)
    net(out.images)
    assert fwd.kind == "cam" and fwd.target_layer_name is not None
    assert not fwd.pending


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_labels_are_finite(dtype):
    if dtype == torch.float16:
        pytest.importorskip("torch")  # CPU autocast supports float16 in recent torch
    net = DemoNet(num_classes=5, width=8)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    soft, out, params, area = mixed_batch(t, torch.rand(6, 3, 32, 32), torch.arange(6) % 5, 5)
    fwd = ForwardLabels(net, "features")
    fwd.arm(out.images, out.labels, soft, params, area)
    with torch.autocast("cpu", dtype=dtype):
        net(out.images)
    assert out.labels.dtype == torch.float32 and torch.isfinite(out.labels).all()
    torch.testing.assert_close(out.labels.sum(1), torch.ones(6))


# ----------------------------------------------------------------------------- clear errors
def armed(net, layer="features", b=4):
    t = salaug.SnapMix(num_classes=5, p=1.0)
    soft, out, params, area = mixed_batch(t, torch.rand(b, 3, 32, 32), torch.arange(b) % 5, 5)
    fwd = ForwardLabels(net, layer)
    fwd.arm(out.images, out.labels, soft, params, area)
    return fwd, out, (soft, params, area)


def test_arming_again_before_the_forward_is_refused():
    net = DemoNet(num_classes=5, width=8)
    fwd, out, (soft, params, area) = armed(net)
    with pytest.raises(RuntimeError, match="never filled"):
        fwd.arm(out.images, out.labels, soft, params, area)
    assert not fwd.pending and not any(m._forward_hooks for m in net.modules())


def test_forward_of_other_images_is_refused():
    net = DemoNet(num_classes=5, width=8)
    fwd, out, _ = armed(net)
    with pytest.raises(RuntimeError, match="other inputs"):
        net(torch.rand(7, 3, 32, 32))
    assert not fwd.pending


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_forward_without_gradients_is_refused(ctx):
    net = DemoNet(num_classes=5, width=8)
    fwd, out, _ = armed(net)
    with pytest.raises(RuntimeError, match="without gradients"), ctx():
        net(out.images)
    assert not fwd.pending


def test_target_layer_that_does_not_run_is_refused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.net(x)

    model = Skip()
    fwd, out, _ = armed(model, layer="unused")
    with pytest.raises(RuntimeError, match="did not run"):
        model(out.images)


def test_compiled_model_and_bad_blend_are_refused():
    net = DemoNet(num_classes=5, width=8)
    with pytest.raises(RuntimeError, match="torch.compile"):
        ForwardLabels(torch.compile(net))
    with pytest.raises(ValueError, match="blend"):
        ForwardLabels(net, blend=1.5)
    with pytest.raises(ValueError):
        ForwardLabels(net, "no.such.layer")


def test_which_transforms_support_forward_labels():
    assert supports_forward_labels(salaug.SnapMix(num_classes=3))
    assert supports_forward_labels(salaug.SaliencyMix(num_classes=3))
    assert supports_forward_labels(salaug.ResizeMix(num_classes=3))
    assert not supports_forward_labels(salaug.GuidedMixup(num_classes=3))
    assert not supports_forward_labels(salaug.SalientCrop())


# ----------------------------------------------------------------------------- ViTs: TransMix
def test_transmix_labels_match_a_direct_attention_computation():
    from salaug.models import tiny_vit

    torch.manual_seed(0)
    vit = tiny_vit(num_classes=5, num_layers=2, hidden_dim=32, mlp_dim=64)
    with torch.no_grad():
        vit.heads.head.weight.normal_()  # torchvision starts the head at zero
    t = salaug.SaliencyMix(num_classes=5, p=1.0)  # CutMix on flat saliency
    soft, out, params, area = mixed_batch(t, torch.rand(6, 3, 32, 32), torch.arange(6) % 5, 5)
    fwd = ForwardLabels(vit)
    assert fwd.kind == "attention" and fwd.blend == 0.5
    attn_module = vit.encoder.layers[-1].self_attention
    seen = {}
    handle = attn_module.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    calls = counting(vit)
    fwd.arm(out.images, out.labels, soft, params, area)
    vit(out.images)
    handle.remove()
    assert len(calls) == 1 and not fwd.pending
    x = seen["x"]
    _, weights = attn_module(x, x, x, need_weights=True, average_attn_weights=True)
    attn = weights[:, 0, 1:]  # (B, 64): CLS row over the 8x8 patches
    box = pasted_region(params, (32, 32))
    tokens = F.avg_pool2d(box, 4).flatten(1)  # the box on the token grid, row-major
    lam_attn = (attn * tokens).sum(1) / attn.sum(1)
    share = (0.5 * lam_attn + 0.5 * area) * params["applied"]
    torch.testing.assert_close(out.labels, mix_soft_labels(soft, params["perm"], share), atol=1e-5, rtol=0)


def test_transmix_under_bf16_autocast_is_finite():
    from salaug.models import tiny_vit

    vit = tiny_vit(num_classes=5, num_layers=2, hidden_dim=32, mlp_dim=64)
    t = salaug.SnapMix(num_classes=5, p=1.0)
    soft, out, params, area = mixed_batch(t, torch.rand(4, 3, 32, 32), torch.arange(4), 5)
    fwd = ForwardLabels(vit)
    fwd.arm(out.images, out.labels, soft, params, area)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vit(out.images)
    assert torch.isfinite(out.labels).all()
    torch.testing.assert_close(out.labels.sum(1), torch.ones(4))


# ----------------------------------------------------------------------------- the augmenter and the callback
def test_augmenter_forward_labels_are_the_visible_shares_with_one_forward_per_step():
    k = 4
    net = MaskNet(k)
    calls = counting(net)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=k, p=1.0), target_layer="features",
                                   labels_from="forward", label_blend=1.0, seed=0)
    for step in range(3):
        x, labels = object_images(8, k)
        x = x.roll(step, 0)
        labels = labels.roll(step, 0)
        images, soft = aug(x, labels)
        area_labels = soft.clone()
        assert len(calls) == step  # the augmenter ran no forward of its own
        net(images)
        assert len(calls) == step + 1
        params = aug.last.params
        region = pasted_region(params, (16, 16))[:, 0]
        own = images[torch.arange(8), labels]
        partner = images[torch.arange(8), labels[params["perm"]]]
        vis_own, vis_partner = (own * (1 - region)).sum((1, 2)), (partner * region).sum((1, 2))
        share = torch.where(vis_own + vis_partner > 0, vis_partner / (vis_own + vis_partner), 0.0)
        expected = mix_soft_labels(F.one_hot(labels, k).float(), params["perm"], share * params["applied"])
        torch.testing.assert_close(soft, expected, atol=1e-5, rtol=0)
        assert not torch.allclose(soft, area_labels)


def test_augmenter_refuses_a_second_batch_before_the_forward():
    net = DemoNet(num_classes=5, width=8)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=5), labels_from="forward", seed=0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    aug(x, y)
    with pytest.raises(RuntimeError, match="never filled"):
        aug(x, y)


@pytest.mark.parametrize("options, match", [
    ({"labels_from": "bogus"}, "labels_from"),
    ({"labels_from": "cam", "label_blend": 0.5}, "label_blend"),
    ({"labels_from": "forward", "label_blend": 2.0}, "label_blend"),
    ({"labels_from": "forward", "cam_scale": 0.5}, "cam_scale"),
    ({"labels_from": "forward", "ema_decay": 0.9}, "ema_decay"),
    ({"labels_from": "forward", "targets": "predicted"}, "targets"),
    ({"labels_from": "forward", "cam": "eigencam"}, "cam"),
])
def test_augmenter_forward_options_are_checked(options, match):
    net = DemoNet(num_classes=5, width=8)
    with pytest.raises(ValueError, match=match):
        salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=5), **options)


def test_auto_is_forward_only_for_snapmix_with_saliency_labels_and_default_cam_options():
    net = DemoNet(num_classes=5, width=8)

    def source(transform, **options):
        return salaug.SaliencyAugmenter(net, transform, **options).labels_from

    assert source(salaug.SnapMix(num_classes=5)) == "forward"
    assert source(salaug.SnapMix(num_classes=5, labels="area")) == "cam"
    assert source(salaug.SnapMix(num_classes=5), cam_scale=0.5) == "cam"
    assert source(salaug.SnapMix(num_classes=5), ema_decay=0.9) == "cam"
    assert source(salaug.SaliencyMix(num_classes=5)) == "cam"  # its box follows the CAM
    assert source(salaug.ResizeMix(num_classes=5)) == "cam"


def test_auto_keeps_the_labels_of_a_given_saliency():
    net = DemoNet(num_classes=5, width=8)
    calls = counting(net)
    aug = salaug.SaliencyAugmenter(net, salaug.SnapMix(num_classes=5, p=1.0), seed=0)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    masks = torch.zeros(4, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1
    _, soft = aug(x, y, saliency=masks)
    ref = salaug.SnapMix(num_classes=5, p=1.0)(x, masks, y, params=aug.last.params)
    torch.testing.assert_close(soft, ref.labels)
    aug(x, y, saliency=masks)  # nothing armed: a second call is fine
    assert len(calls) == 0


def test_augmenter_refuses_forward_labels_for_a_mix_that_is_not_a_box_mix():
    net = DemoNet(num_classes=5, width=8)
    with pytest.raises(ValueError, match="box mix"):
        salaug.SaliencyAugmenter(net, salaug.GuidedMixup(num_classes=5), labels_from="forward")


def test_callback_forward_labels_are_final_when_the_loss_reads_them(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = DemoNet(num_classes=5, width=8)
            self.forwards = 0
            self.read: list = []

        def forward(self, x):
            self.forwards += 1
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            before = y.clone()
            logits = self(x)
            self.read.append((before, y.clone()))  # what the loss reads
            return F.cross_entropy(logits, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.rand(24, 3, 32, 32), torch.arange(24) % 5)
    module = Module()
    cb = salaug.SaliencyAugmentation(salaug.SnapMix(num_classes=5, p=1.0), target_layer="net.features",
                                     labels_from="forward", seed=0, log_every_n_steps=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                         precision="bf16-mixed", callbacks=[cb])
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert module.forwards == 3 and len(module.read) == 3  # one forward per step: no CAM pass
    assert cb.labels_from == "forward"
    for _, after in module.read:
        assert torch.isfinite(after).all()
        torch.testing.assert_close(after.sum(1), torch.ones(8))
    assert any(not torch.allclose(before, after) for before, after in module.read)


def test_ddp_each_rank_fills_its_labels_from_its_own_forward(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "ddp_fit.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, script, str(tmp_path), "forward"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    y0, y1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert y0.shape == y1.shape == (2, 8, 4)
    torch.testing.assert_close(y0.sum(-1), torch.ones(2, 8))
    assert torch.isfinite(y0).all() and torch.isfinite(y1).all()
    assert not torch.equal(y0, y1)  # each rank its own boxes, its own forward
    assert (y0.amax(-1) < 1).any() and (y1.amax(-1) < 1).any()  # mixed labels
    for rank, after in ((0, y0), (1, y1)):  # the forward rewrote what the callback had written
        assert not torch.allclose(torch.load(tmp_path / f"rank{rank}_before.pt"), after)
