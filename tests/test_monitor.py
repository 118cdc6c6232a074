"""SaliencyMonitor in real fits: metrics logged from validation batches with true boxes."""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader, Dataset

from salaug import SaliencyMonitor
from test_callback import Net, Squares


class SquaresWithBoxes(Dataset):
    def __init__(self, n: int = 16) -> None:
        self.base = Squares(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        r, c = divmod(int(y), 2)
        return x, y, torch.tensor([c * 8 + 2, r * 8 + 2, c * 8 + 6, r * 8 + 6])


class ValNet(Net):
    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))


def brightness_net() -> ValNet:
    """Hand-set weights whose CAM is blurred brightness: it must point at the bright square."""
    model = ValNet()
    with torch.no_grad():
        for conv in (model.net[0], model.net[3]):
            conv.weight.fill_(1.0 / conv.weight[0].numel())
            conv.bias.zero_()
        model.head[3].weight.fill_(1.0)
    return model


def fit(tmp_path, model, monitor, epochs=1, **kw):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=CSVLogger(str(tmp_path)),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[monitor], limit_train_batches=0 if epochs == 0 else 1.0, **kw)
    val = DataLoader(SquaresWithBoxes(), batch_size=8)
    if epochs == 0:
        trainer.validate(model, val)
    else:
        trainer.fit(model, DataLoader(Squares(16), batch_size=8), val)
    return trainer


def test_metrics_from_true_boxes_and_a_picture(tmp_path):
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4)
    model = brightness_net()
    trainer = fit(tmp_path, model, monitor, epochs=0)
    metrics = trainer.callback_metrics
    assert float(metrics["salaug_monitor/pointing_game"]) == 1.0  # the CAM peaks on every square
    assert float(metrics["salaug_monitor/box_iou"]) > 0.2
    assert 0.0 <= float(metrics["salaug_monitor/eigen_agreement"]) <= 1.0
    pngs = [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".png")]
    assert len(pngs) == 1


def test_no_logger_draws_and_writes_nothing(tmp_path, monkeypatch):
    import salaug.viz

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(salaug.viz, "save_grid", lambda *a, **k: pytest.fail("a picture was written"))
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[monitor], default_root_dir=str(tmp_path))
    trainer.validate(brightness_net(), DataLoader(SquaresWithBoxes(), batch_size=8))
    assert float(trainer.callback_metrics["salaug_monitor/pointing_game"]) == 1.0  # the metrics still run
    assert os.listdir(tmp_path) == []


def test_picture_dir_without_a_logger(tmp_path):
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4, picture_dir=tmp_path / "pictures")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[monitor], default_root_dir=str(tmp_path / "root"))
    trainer.validate(brightness_net(), DataLoader(SquaresWithBoxes(), batch_size=8))
    assert os.listdir(tmp_path / "pictures") == ["epoch0000.png"]


def test_head_check_scores_the_ablation_cam_against_the_boxes(tmp_path):
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4)
    metrics = fit(tmp_path, brightness_net(), monitor, epochs=0).callback_metrics
    # Every channel carries the bright square with the same head weight: the head relies on it.
    assert float(metrics["salaug_monitor/head_pointing_game"]) == 1.0
    assert float(metrics["salaug_monitor/head_score"]) > 0.5
    assert float(metrics["salaug_monitor/backbone_score"]) > 0.5
    assert float(metrics["salaug_monitor/head_agreement"]) > 0.8  # AblationCAM and EigenCAM agree here
    for name in ("head_score", "backbone_score", "head_pointing_game", "head_agreement"):
        assert 0.0 <= float(metrics[f"salaug_monitor/{name}"]) <= 1.0


def _png_heights(root) -> list[int]:
    from PIL import Image

    paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".png")]
    return [Image.open(p).size[1] for p in paths]


def test_head_check_runs_on_capped_batches_only(tmp_path, monkeypatch):
    import salaug.cam

    calls = []
    original = salaug.cam.AblationCAM.__call__

    def counting(self, images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(salaug.cam.AblationCAM, "__call__", counting)
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4, head_max_batches=1)
    fit(tmp_path, brightness_net(), monitor, epochs=0)  # two validation batches of 8
    assert calls == [8, 4]  # one capped metric batch, then the picture's 4 images
    sums = monitor._sums
    assert int(sums["head_score"][1]) == 8 and int(sums["backbone_score"][1]) == 16
    assert _png_heights(tmp_path)[0] > 0


def test_head_check_off(tmp_path, monkeypatch):
    import salaug.cam

    monkeypatch.setattr(salaug.cam.AblationCAM, "__call__", lambda *a, **k: pytest.fail("AblationCAM ran"))
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4, head_check=False)
    metrics = fit(tmp_path / "off", brightness_net(), monitor, epochs=0).callback_metrics
    assert "salaug_monitor/backbone_score" in metrics and "salaug_monitor/head_score" not in metrics
    monkeypatch.undo()
    fit(tmp_path / "on", brightness_net(), SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4), epochs=0)
    assert _png_heights(tmp_path / "on")[0] > _png_heights(tmp_path / "off")[0]  # one more row: AblationCAM


def test_runs_each_epoch_in_fit_and_leaves_the_model_alone(tmp_path):
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, max_batches=1)
    model = ValNet()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    fit(tmp_path, model, monitor, epochs=2, num_sanity_val_steps=0, limit_val_batches=1)
    assert [h["epoch"] for h in monitor.history] == [0.0, 1.0]
    assert all(0 <= h["salaug_monitor/pointing_game"] <= 1 for h in monitor.history)
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # training did run


def test_without_boxes_only_agreement(tmp_path):
    monitor = SaliencyMonitor(target_layer="net.5", label_key=None)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[monitor], default_root_dir=str(tmp_path))
    trainer.validate(ValNet(), DataLoader(Squares(16), batch_size=8))
    assert "salaug_monitor/eigen_agreement" in trainer.callback_metrics
    assert "salaug_monitor/head_agreement" in trainer.callback_metrics
    assert "salaug_monitor/pointing_game" not in trainer.callback_metrics
    assert "salaug_monitor/head_score" not in trainer.callback_metrics


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        SaliencyMonitor(num_images=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        SaliencyMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="head_max_batches.*head_check=False"):
        SaliencyMonitor(head_max_batches=0)


def test_more_bad_arguments_are_refused_at_construction():
    with pytest.raises(ValueError, match="max_batches must be an int >= 1 or None"):
        SaliencyMonitor(max_batches=0)
    with pytest.raises(TypeError, match="max_batches must be an int"):
        SaliencyMonitor(max_batches=1.5)
    with pytest.raises(TypeError, match="box_key must be an int position"):
        SaliencyMonitor(box_key=2.0)
    with pytest.raises(TypeError, match="head_check must be True or False"):
        SaliencyMonitor(head_check="yes")


def test_hooks_are_marked_override():
    for name in ("setup", "on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end",
                 "state_dict", "load_state_dict"):
        assert getattr(getattr(SaliencyMonitor, name), "__override__", False), name
    assert SaliencyMonitor.state_key.fget.__override__


def test_history_survives_a_resume(tmp_path):
    def run(epochs, ckpt=None):
        monitor = SaliencyMonitor(target_layer="net.5", box_key=2, max_batches=1, head_check=False)
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[monitor, checkpoint], num_sanity_val_steps=0,
                             limit_val_batches=1, default_root_dir=str(tmp_path))
        trainer.fit(ValNet(), DataLoader(Squares(16), batch_size=8), DataLoader(SquaresWithBoxes(), batch_size=8),
                    ckpt_path=ckpt)
        return monitor

    first = run(1)
    resumed = run(2, ckpt=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in first.history] == [0.0]
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0]  # epoch 0 came back from the checkpoint
    assert resumed.history[0] == first.history[0]


@pytest.mark.parametrize("state", [{}, {"seed": 1}, None])
def test_load_state_dict_refuses_a_foreign_state(state):
    with pytest.raises(ValueError, match="'history' entry"):
        SaliencyMonitor().load_state_dict(state)
    with pytest.raises(TypeError, match="list of .name: number. dicts"):
        SaliencyMonitor().load_state_dict({"history": [{"loss": "high"}]})


def test_fast_dev_run_draws_no_picture(tmp_path, monkeypatch):
    import salaug.viz

    monkeypatch.setattr(salaug.viz, "save_grid", lambda *a, **k: pytest.fail("a picture was written"))
    monitor = SaliencyMonitor(target_layer="net.5", box_key=2, num_images=4, picture_dir=tmp_path / "pictures")
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[monitor], default_root_dir=str(tmp_path))
    trainer.fit(brightness_net(), DataLoader(Squares(16), batch_size=8), DataLoader(SquaresWithBoxes(), batch_size=8))
    assert not (tmp_path / "pictures").exists()
