"""End-to-end tests of SaliencyAugmentation in real Trainer.fit runs on CPU with a tiny CNN."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import salaug
from salaug.callback import SaliencyAugmentation
from salaug.transforms.base import SaliencyTransform, SalientBatch

K = 4


class Squares(Dataset):
    """Class k: a bright square in quadrant k on noise; 16x16 RGB."""

    def __init__(self, n: int = 32, as_dict: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 16, 16, generator=g) * 0.3
        self.y = torch.arange(n) % K
        for i in range(n):
            r, c = divmod(int(self.y[i]), 2)
            self.x[i, :, r * 8 + 2 : r * 8 + 6, c * 8 + 2 : c * 8 + 6] = 1.0
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        if self.as_dict:
            return {"image": self.x[i], "target": self.y[i]}
        return self.x[i], self.y[i]


class Net(pl.LightningModule):
    def __init__(self, keys=(0, 1)) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, K))
        self.keys = keys
        self.seen: list = []

    def forward(self, x):
        return self.head(self.net(x))

    def training_step(self, batch, batch_idx):
        x, y = batch[self.keys[0]], batch[self.keys[1]]
        self.seen.append((x.detach().clone(), y.detach().clone()))
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Recording(SaliencyTransform):
    """Wraps a transform and keeps what it returned, to compare with what training_step got."""

    def __init__(self, inner: SaliencyTransform) -> None:
        super().__init__(num_classes=inner.num_classes)
        self.inner = inner
        self.outputs: list[SalientBatch] = []
        self.saliency: list[torch.Tensor] = []

    def forward(self, images, saliency, labels, **kw):
        result = self.inner(images, saliency, labels, **kw)
        out = result[0] if isinstance(result, tuple) and not isinstance(result, SalientBatch) else result
        self.outputs.append(SalientBatch(*(t.detach().clone() if t is not None else None for t in out)))
        self.saliency.append(saliency.detach().clone() if saliency is not None else None)
        return result


def trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    args = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


def loader(ds=None, **kw) -> DataLoader:
    return DataLoader(ds or Squares(), batch_size=8, **kw)


def mix(**kw) -> SaliencyTransform:
    kw.setdefault("p", 1.0)  # every sample mixed: the tests look at mixed images
    return salaug.SaliencyMix(num_classes=K, **kw)


def test_training_step_receives_the_augmented_batch(tmp_path):
    pl.seed_everything(0)
    rec = Recording(mix())
    model = Net()
    trainer(tmp_path, [SaliencyAugmentation(rec, target_layer="net.5")]).fit(model, loader())
    assert len(model.seen) == len(rec.outputs) == 4
    originals = Squares().x
    for (x, y), out in zip(model.seen, rec.outputs):
        assert y.shape == (8, K) and y.dtype == torch.float32
        torch.testing.assert_close(y.sum(1), torch.ones(8))
        assert torch.equal(x, out.images) and torch.equal(y, out.labels)
    changed = torch.cat([x for x, _ in model.seen]).ne(originals).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # SaliencyMix with p=1 changes most images
    assert any((y.max(1).values < 1).any() for _, y in model.seen)  # real soft labels
    for s in rec.saliency:
        assert s.shape == (8, 1, 16, 16) and 0 <= s.min() and s.max() <= 1


def test_dict_batch_and_keys(tmp_path):
    model = Net(keys=("image", "target"))
    cb = SaliencyAugmentation(mix(), target_layer="net.5", image_key="image", label_key="target")
    trainer(tmp_path, [cb]).fit(model, loader(Squares(as_dict=True)))
    assert all(y.shape == (8, K) for _, y in model.seen)


def test_tuple_batch_gets_a_clear_error(tmp_path):
    def collate(samples):
        return tuple(torch.utils.data.default_collate(samples))

    with pytest.raises(TypeError, match="tuple.*cannot be changed in place"):
        trainer(tmp_path, [SaliencyAugmentation(mix())]).fit(Net(), loader(collate_fn=collate))


def test_missing_key_names_the_fix(tmp_path):
    with pytest.raises(KeyError, match="image_key"):
        trainer(tmp_path, [SaliencyAugmentation(mix(), image_key="img")]).fit(Net(), loader(Squares(as_dict=True)))


def test_dataloader_iter_training_step_is_refused(tmp_path):
    class IterNet(Net):
        def training_step(self, dataloader_iter):
            batch = next(dataloader_iter)[0]
            return F.cross_entropy(self(batch[0]), batch[1])

    with pytest.raises(ValueError, match="dataloader_iter"):
        trainer(tmp_path, [SaliencyAugmentation(mix())]).fit(IterNet(), loader())


def test_constructor_validation():
    with pytest.raises(TypeError, match="salaug transform"):
        SaliencyAugmentation(lambda *a: a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cam_scale"):
        SaliencyAugmentation(mix(), cam_scale=0.0)
    with pytest.raises(ValueError, match="batch_p must be"):
        SaliencyAugmentation(mix(), batch_p=1.5)
    with pytest.raises(ValueError, match="start_epoch"):
        SaliencyAugmentation(mix(), start_epoch=2, stop_epoch=1)


class Probe(pl.Callback):
    """Snapshots model state in on_train_batch_start; a second instance compares."""

    def __init__(self, reference: Probe | None = None) -> None:
        self.reference = reference
        self.snapshots: list = []
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        snap = {
            "buffers": {k: v.clone() for k, v in pl_module.state_dict().items()},
            "grads": [None if p.grad is None else p.grad.clone() for p in pl_module.parameters()],
            "modes": [m.training for m in pl_module.modules()],
            "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                         for m in pl_module.modules()),
            "grad_enabled": torch.is_grad_enabled(),
        }
        if self.reference is None:
            self.snapshots.append(snap)
            return
        before = self.reference.snapshots[-1]
        for k, v in before["buffers"].items():
            assert torch.equal(v, snap["buffers"][k]), f"{k} changed by the callback"
        for g0, g1 in zip(before["grads"], snap["grads"]):
            assert (g0 is None and g1 is None) or torch.equal(g0, g1)
        assert before["modes"] == snap["modes"]
        assert before["hooks"] == snap["hooks"]
        assert before["grad_enabled"] == snap["grad_enabled"]
        self.checked += 1


@pytest.mark.parametrize("cam", ["gradcam", "gradcam++", "eigencam"])
def test_no_side_effects_with_gradient_accumulation(tmp_path, cam):
    before = Probe()
    after = Probe(before)
    model = Net()
    model.net[1].train()  # a mixed mode must survive too
    model.head[2].eval()
    cb = SaliencyAugmentation(mix(), cam=cam, target_layer="net.5")
    trainer(tmp_path, [before, cb, after], accumulate_grad_batches=2).fit(model, loader())
    assert after.checked == 4
    # grads were mid-accumulation on odd batches: the probe compared them bitwise
    assert any(g is not None for g in before.snapshots[1]["grads"])


def test_cam_scale_and_predicted_targets(tmp_path):
    rec = Recording(mix())
    cb = SaliencyAugmentation(rec, target_layer="net.5", cam_scale=0.5, targets="predicted")
    trainer(tmp_path, [cb]).fit(Net(), loader())
    assert all(s.shape == (8, 1, 16, 16) for s in rec.saliency)


def test_predicted_targets_take_the_cam_of_the_prediction_not_of_the_label(tmp_path):
    model = Net()
    initial = copy.deepcopy(model).eval()  # the weights of the first batch's CAM (before any step)
    x = Squares().x[:8]
    with torch.no_grad():
        labels = (initial(x).argmax(1) + 1) % K  # every label differs from the prediction
    rec = Recording(mix())
    cb = SaliencyAugmentation(rec, target_layer="net.5", targets="predicted")
    trainer(tmp_path, [cb], max_steps=1).fit(model, DataLoader(TensorDataset(x, labels), batch_size=8))
    used = rec.saliency[0]
    torch.testing.assert_close(used, salaug.GradCAM(initial, "net.5")(x, None))
    label_maps = salaug.GradCAM(initial, "net.5")(x, labels)
    assert (used - label_maps).abs().flatten(1).amax(1).gt(0.1).all()  # each map differs from its label's


def test_cam_scale_maps_find_the_same_object(tmp_path):
    # Hand-set weights: every channel is a blurred brightness detector and every class reads it,
    # so the CAM must peak on the bright square at full and at half scale.
    model = Net().eval()
    with torch.no_grad():
        for conv in (model.net[0], model.net[3]):
            conv.weight.fill_(1.0 / conv.weight[0].numel())
            conv.bias.zero_()
        model.head[3].weight.fill_(1.0)
    ds = Squares()
    images, labels = ds.x[:8], ds.y[:8]
    small = F.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True)
    for maps in (salaug.GradCAM(model, "net.5")(images, labels),
                 salaug.GradCAM(model, "net.5")(small, labels, output_size=(16, 16))):
        peak = salaug.boxes.peak(maps)
        r, c = labels.div(2, rounding_mode="floor"), labels % 2
        assert ((peak[:, 0] >= c * 8 + 1) & (peak[:, 0] < c * 8 + 7)).all()
        assert ((peak[:, 1] >= r * 8 + 1) & (peak[:, 1] < r * 8 + 7)).all()


def test_batch_p_and_epoch_window(tmp_path):
    model = Net()
    cb = SaliencyAugmentation(mix(p=1.0), target_layer="net.5", start_epoch=1, stop_epoch=2, batch_p=0.5, seed=3)
    trainer(tmp_path, [cb], max_epochs=3).fit(model, loader(Squares(n=64)))
    per_epoch = [model.seen[i * 8 : (i + 1) * 8] for i in range(3)]
    assert all(y.ndim == 1 for _, y in per_epoch[0] + per_epoch[2])  # outside the window: untouched
    assert all(y.shape == (8, K) for _, y in per_epoch[1])  # inside: always soft labels
    assert cb.batches_seen == 8 and 0 < cb.batches_augmented < 8
    mixed = [bool((y.max(1).values < 1).any()) for _, y in per_epoch[1]]
    assert sum(mixed) == cb.batches_augmented


def test_num_classes_inferred_from_model(tmp_path):
    model = Net()
    cb = SaliencyAugmentation(salaug.SaliencyMix(), target_layer="net.5")
    trainer(tmp_path, [cb]).fit(model, loader())
    assert cb.augmenter is not None and cb.augmenter.num_classes == K and model.seen[0][1].shape == (8, K)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_continues_the_same_random_stream(tmp_path, ema_decay):
    def run(max_epochs, ckpt=None, root="a"):
        pl.seed_everything(7)
        rec = Recording(mix())
        model = Net()
        model.head[2].p = 0.0  # dropout draws from the global RNG, which checkpoints do not restore
        ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / root, save_last=True)
        cb = SaliencyAugmentation(rec, target_layer="net.5", seed=11, ema_decay=ema_decay)
        t = trainer(tmp_path / root, [cb, ckpt_cb],
                    max_epochs=max_epochs, enable_checkpointing=True)
        t.fit(model, loader(), ckpt_path=ckpt)
        return rec.outputs

    full = run(4, root="full")
    first = run(2, root="part")
    resumed = run(4, ckpt=str(tmp_path / "part" / "last.ckpt"), root="part")
    assert len(full) == 16 and len(first) == 8 and len(resumed) == 8
    for a, b in zip(full, first + resumed):
        torch.testing.assert_close(a.images, b.images)
        torch.testing.assert_close(a.labels, b.labels)
    assert not torch.equal(full[0].images, full[4].images)  # the stream moves on between epochs


def test_state_dict_round_trip_and_state_key():
    cb = SaliencyAugmentation(mix(), cam="gradcam", target_layer="net.5", seed=5)
    cb.load_state_dict({"seed": 5, "batches_seen": 9, "batches_augmented": 4})
    other = SaliencyAugmentation(mix(), cam="gradcam", target_layer="net.5")
    other.load_state_dict(copy.deepcopy(cb.state_dict()))
    assert (other.state_dict()["seed"], other.batches_seen, other.batches_augmented) == (5, 9, 4)
    assert cb.state_key == other.state_key
    assert SaliencyAugmentation(mix(), cam="eigencam").state_key != cb.state_key


def test_bf16_mixed_precision(tmp_path):
    rec = Recording(mix())
    trainer(tmp_path, [SaliencyAugmentation(rec, target_layer="net.5")], precision="bf16-mixed").fit(Net(), loader())
    assert len(rec.outputs) == 4
    assert all(torch.isfinite(s).all() and s.amax() > 0 for s in rec.saliency)


def test_torch_compiled_module(tmp_path):
    model = Net()
    compiled = torch.compile(model, backend="eager")
    rec = Recording(mix())
    trainer(tmp_path, [SaliencyAugmentation(rec, target_layer="net.5")]).fit(compiled, loader())
    assert len(rec.outputs) == 4 and all(s.amax() > 0 for s in rec.saliency)


@pytest.mark.parametrize("package", ["pytorch_lightning", "lightning.pytorch"])
@pytest.mark.parametrize("name", ["FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAStrategy"])
def test_sharded_strategy_is_refused_by_class(package, name):
    strategies = pytest.importorskip(f"{package}.strategies")
    sharded = type(f"My{name}", (getattr(strategies, name),), {"__init__": lambda self: None})

    class FakeTrainer:
        strategy = sharded()  # a subclass: the check is isinstance, not the class name

    with pytest.raises(RuntimeError, match=f"does not support My{name}"):
        SaliencyAugmentation(mix()).setup(FakeTrainer(), Net(), "fit")  # type: ignore[arg-type]


def test_strategy_named_like_fsdp_is_not_refused_by_its_name():
    class FSDPLookalike:  # not a Lightning strategy class: the name alone must not trigger the refusal
        pass

    class FakeTrainer:
        strategy = FSDPLookalike()
        global_rank = 0

    cb = SaliencyAugmentation(mix(), target_layer="net.5")
    cb.setup(FakeTrainer(), Net(), "fit")  # type: ignore[arg-type]
    assert cb.augmenter is not None


def test_lightning_namespace_trainer(tmp_path):
    L = pytest.importorskip("lightning.pytorch")

    class LNet(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.inner = Net()
            self.seen = []

        def forward(self, x):
            return self.inner(x)

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[1].clone())
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    model = LNet()
    t = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
                  callbacks=[SaliencyAugmentation(mix(), target_layer="inner.net.5")])
    t.fit(model, loader())
    assert len(model.seen) == 4 and all(y.shape == (8, K) for y in model.seen)


def test_tensorboard_images_and_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from pytorch_lightning.loggers import TensorBoardLogger

    model = Net()
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    cb = SaliencyAugmentation(mix(), target_layer="net.5", log_every_n_steps=2)
    trainer(tmp_path, [cb], logger=logger, log_every_n_steps=1).fit(model, loader())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert "salaug/cam_and_augmented" in acc.Tags()["images"]
    assert len(acc.Images("salaug/cam_and_augmented")) == 2  # augmented steps 1 and 3
    assert {"salaug/augmented_step", "salaug/label_weight_step"} <= set(acc.Tags()["scalars"])


def test_png_pictures_without_image_logger(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    cb = SaliencyAugmentation(mix(), target_layer="net.5", log_every_n_steps=4)
    trainer(tmp_path, [cb], logger=CSVLogger(str(tmp_path))).fit(Net(), loader())
    pngs = [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".png")]
    assert len(pngs) == 1


def test_ddp_two_processes_each_with_its_own_stream(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "ddp_fit.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    y0 = torch.load(tmp_path / "rank0.pt")
    y1 = torch.load(tmp_path / "rank1.pt")
    assert y0.shape == y1.shape == (2, 8, K)
    torch.testing.assert_close(y0.sum(-1), torch.ones(2, 8))
    assert not torch.equal(y0, y1)


def is_flat(s: torch.Tensor) -> bool:
    flat = s.flatten(1)
    return bool((flat.amax(1) - flat.amin(1)).le(1e-6).all())


def test_adapter_exposes_the_augmenter(tmp_path):
    cb = SaliencyAugmentation(mix(), target_layer="net.5", seed=2)
    assert cb.augmenter is None
    trainer(tmp_path, [cb]).fit(Net(), loader())
    assert isinstance(cb.augmenter, salaug.SaliencyAugmenter)
    assert (cb.augmenter.steps, cb.augmenter.seed) == (cb.batches_seen, 2) == (4, 2)


class FakeTrainer:
    strategy = None
    global_rank = 0


def test_the_callback_composes_an_augmenter_built_at_setup():
    cb = SaliencyAugmentation(mix(), target_layer="net.5", seed=2, batch_p=0.5, cam_scale=0.5, ema_decay=0.9)
    assert cb.augmenter is None and cb.state_dict() == {"seed": 2, "batches_seen": 0, "batches_augmented": 0}
    module = Net()
    cb.setup(FakeTrainer(), module, "fit")  # type: ignore[arg-type]
    aug = cb.augmenter
    assert isinstance(aug, salaug.SaliencyAugmenter) and aug.model is module
    assert isinstance(aug.source, salaug.sources.LiveCAM)
    assert (aug.batch_p, aug.source.cam_scale, aug.seed, aug.source.ema.decay, aug.transform) == \
        (0.5, 0.5, 2, 0.9, cb.transform)
    aug.steps, aug.augmented = 7, 3
    assert (cb.batches_seen, cb.batches_augmented) == (7, 3)  # read from the augmenter, not mirrored
    assert cb.state_dict() == {"seed": 2, "batches_seen": 7, "batches_augmented": 3}
    other = SaliencyAugmentation(mix(), target_layer="net.5")
    other.load_state_dict(cb.state_dict())
    other.setup(FakeTrainer(), Net(), "fit")  # type: ignore[arg-type]
    assert other.state_dict() == cb.state_dict()  # symmetric: what state_dict gives, load_state_dict takes
    with pytest.raises(AttributeError):
        cb.batches_seen = 1  # type: ignore[misc]


def test_a_model_free_source_replaces_the_cam():
    rec = Recording(mix())
    cb = SaliencyAugmentation(rec, source=salaug.sources.Flat())
    model = Net()
    with pytest.raises(ValueError, match="source= gives the saliency, so cam_scale cannot apply"):
        cb2 = SaliencyAugmentation(rec, source=salaug.sources.Flat(), cam_scale=0.5)
        cb2.setup(FakeTrainer(), model, "fit")  # type: ignore[arg-type]
    cb.setup(FakeTrainer(), model, "fit")  # type: ignore[arg-type]
    assert cb.augmenter is not None and cb.augmenter.labels_from == "source"


def test_batch_p_set_during_training_takes_effect_at_the_next_batch(tmp_path):
    class SwitchOff(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:
                augment.augmenter.batch_p = 0.0  # the augmenter built at setup holds the options

    augment = SaliencyAugmentation(mix(), target_layer="net.5")
    model = Net()
    trainer(tmp_path, [augment, SwitchOff()]).fit(model, loader())
    mixed = [bool((y.max(1).values < 1).any()) for _, y in model.seen]
    assert mixed == [True, True, False, False]
    assert (augment.batches_seen, augment.batches_augmented) == (4, 2)


def test_ema_state_loaded_before_setup_is_checked_at_setup(tmp_path):
    cb = SaliencyAugmentation(mix(), target_layer="net.5", seed=1, ema_decay=0.9)
    trainer(tmp_path, [cb], max_steps=1).fit(Net(), loader())
    state = cb.state_dict()
    fresh = SaliencyAugmentation(mix(), target_layer="net.5", ema_decay=0.9)
    fresh.load_state_dict(state)  # no model yet: kept for the copy made at the first batch
    fresh.setup(FakeTrainer(), Net(), "fit")  # type: ignore[arg-type]
    assert fresh.augmenter is not None
    for k, v in state["ema"].items():
        assert torch.equal(fresh.augmenter.state_dict()["ema"][k], v), k
    foreign = SaliencyAugmentation(mix(), target_layer="net.5", ema_decay=0.9)
    foreign.load_state_dict({**state, "ema": {k: v[..., :1] if v.ndim else v for k, v in state["ema"].items()}})
    with pytest.raises(ValueError, match=r"load_state_dict: state_dict\['ema'\].*another "):
        foreign.setup(FakeTrainer(), Net(), "fit")  # type: ignore[arg-type]


def test_hooks_are_marked_override():
    for name in ("setup", "teardown", "on_train_start", "on_train_end", "on_train_batch_start", "on_exception",
                 "state_dict", "load_state_dict"):
        assert getattr(getattr(SaliencyAugmentation, name), "__override__", False), name
    assert SaliencyAugmentation.state_key.fget.__override__


@pytest.mark.parametrize("state, error, match", [
    ({}, ValueError, r"no 'seed', 'batches_seen', 'batches_augmented' entries"),
    ({"seed": 9, "batches_seen": 3}, ValueError, r"no 'batches_augmented' entry"),
    ({"seed": "abc", "batches_seen": 3, "batches_augmented": 0}, TypeError, r"state_dict\['seed'\]"),
    ({"seed": 1, "batches_seen": -4, "batches_augmented": 0}, ValueError, r"state_dict\['batches_seen'\]"),
    (None, TypeError, "needs the dict its state_dict"),
    ([], TypeError, "needs the dict its state_dict"),
])
def test_load_state_dict_refuses_foreign_or_broken_states(state, error, match):
    cb = SaliencyAugmentation(mix(), seed=4)
    with pytest.raises(error, match=match):
        cb.load_state_dict(state)
    assert (cb.seed, cb.batches_seen, cb.batches_augmented) == (4, 0, 0)


def test_p_is_a_deprecated_name_of_batch_p():
    with pytest.warns(DeprecationWarning, match="batch_p"):
        cb = SaliencyAugmentation(mix(), p=0.25)
    assert cb.batch_p == 0.25
    with pytest.warns(DeprecationWarning, match="batch_p"):
        cb.p = 0.5
    assert cb.batch_p == 0.5


def test_ema_state_of_another_architecture_is_refused(tmp_path):
    cb = SaliencyAugmentation(mix(), target_layer="net.5", seed=1, ema_decay=0.9)
    trainer(tmp_path, [cb], max_steps=1).fit(Net(), loader())
    state = cb.state_dict()
    state["ema"] = {k: v[..., :1] if v.ndim else v for k, v in state["ema"].items()}
    with pytest.raises(ValueError, match=r"state_dict\['ema'\].*another architecture"):
        cb.load_state_dict(state)


@pytest.mark.parametrize("kind", ["epochs", "steps"])
def test_warmup_gives_flat_saliency_first(tmp_path, kind):
    rec = Recording(mix())
    option = {"warmup_epochs": 1} if kind == "epochs" else {"warmup_steps": 4}
    cb = SaliencyAugmentation(rec, target_layer="net.5", **option)
    trainer(tmp_path, [cb], max_epochs=2).fit(Net(), loader())
    assert cb.augmenter is not None and cb.augmenter.warmup_steps == 4  # 1 epoch = 4 batches
    assert len(rec.saliency) == 8
    assert all(s is None for s in rec.saliency[:4])  # flat: the box mix reads no map
    assert not any(s is None or is_flat(s) for s in rec.saliency[4:])


def test_compute_saliency_override_is_used_with_a_deprecation_warning(tmp_path):
    class Zeros(SaliencyAugmentation):
        def compute_saliency(self, trainer, pl_module, images, labels):
            return torch.zeros_like(images[:, :1])

    rec = Recording(mix())
    with pytest.warns(DeprecationWarning, match="compute_saliency.*source="):
        trainer(tmp_path, [Zeros(rec, target_layer="net.5")]).fit(Net(), loader())
    assert len(rec.saliency) == 4 and all(bool((s == 0).all()) for s in rec.saliency)


def test_window_that_never_takes_effect_is_reported(tmp_path):
    with pytest.warns(UserWarning, match=r"start_epoch=3\) will never augment.*max_epochs=2"):
        trainer(tmp_path, [SaliencyAugmentation(mix(), start_epoch=3)], max_epochs=2).fit(Net(), loader())
    with pytest.warns(UserWarning, match=r"warmup_epochs=2\) covers the whole augmentation window"):
        trainer(tmp_path, [SaliencyAugmentation(mix(), warmup_epochs=2, target_layer="net.5")],
                max_epochs=2).fit(Net(), loader())


def test_num_classes_mismatch_is_reported_at_the_first_batch(tmp_path):
    cb = SaliencyAugmentation(salaug.SaliencyMix(num_classes=K + 1), target_layer="net.5")
    with pytest.raises(ValueError, match=f"is {K + 1} but the model outputs {K} classes"):
        trainer(tmp_path, [cb]).fit(Net(), loader())


def test_nan_training_image_is_named(tmp_path):
    ds = Squares()
    ds.x[9, 1, 3, 3] = float("nan")  # the second batch, its second image
    with pytest.raises(ValueError, match=r"NaN or inf values \(samples \[1\]\)"):
        trainer(tmp_path, [SaliencyAugmentation(mix(), target_layer="net.5")]).fit(Net(), loader(ds))


def test_cam_scale_too_small_for_tiny_images(tmp_path):
    # Net keeps the resolution: 16x16 images at cam_scale 1/16 are 1x1 CAM inputs with 1x1 maps.
    cb = SaliencyAugmentation(mix(), target_layer="net.5", cam_scale=0.0625)
    with pytest.raises(ValueError, match=r"cam_scale=0.0625 the 16x16 images become 1x1 CAM inputs.*Raise cam_scale"):
        trainer(tmp_path, [cb]).fit(Net(), loader())


def count_pictures(monkeypatch) -> list:
    import threading

    import salaug.callback as module

    calls = []
    real = module._draw_picture

    def spy(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "_draw_picture", spy)
    return calls


def pngs(root) -> list:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".png")]


@pytest.mark.parametrize("options", [dict(logger=False), dict(fast_dev_run=True)])
def test_no_pictures_and_no_files_without_a_logger(tmp_path, monkeypatch, options):
    from pytorch_lightning.loggers import CSVLogger

    monkeypatch.chdir(tmp_path)
    calls = count_pictures(monkeypatch)
    if "fast_dev_run" in options:
        options = {**options, "logger": CSVLogger(str(tmp_path / "csv"))}  # disabled by fast_dev_run
    cb = SaliencyAugmentation(mix(), target_layer="net.5", log_every_n_steps=1)
    trainer(tmp_path, [cb], **options).fit(Net(), loader())
    assert cb.batches_augmented >= 1
    assert calls == [] and pngs(tmp_path) == []


def test_picture_dir_without_a_logger(tmp_path, monkeypatch):
    calls = count_pictures(monkeypatch)
    cb = SaliencyAugmentation(mix(), target_layer="net.5", log_every_n_steps=2, picture_dir=tmp_path / "pics")
    trainer(tmp_path, [cb]).fit(Net(), loader())
    assert sorted(os.listdir(tmp_path / "pics")) == ["step0000000.png", "step0000002.png"]
    assert calls and all(name.startswith("salaug-pictures") for name in calls)  # drawn off the training thread


def test_a_loaded_seed_of_zero_is_kept_at_setup():
    cb = SaliencyAugmentation(mix(), target_layer="net.5")
    cb.load_state_dict({"seed": 0, "batches_seen": 3, "batches_augmented": 1})
    cb.setup(FakeTrainer(), Net(), "fit")  # type: ignore[arg-type]
    assert cb.augmenter is not None and (cb.augmenter.seed, cb.augmenter.steps) == (0, 3)
