"""Run every example (and ``python -m salaug demo``) in reduced form, as a user would.

Each example runs as a subprocess (``sys.executable``) in a temporary working directory, so the
outputs land there; the assertions check the exit code, the printed summary lines and the files
written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 300  # seconds per run: generous, for loaded CI machines


def run(args: list[str], cwd: Path) -> str:
    """Run ``python *args`` in ``cwd`` with the checkout importable; return stdout + stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited with {done.returncode}:\n{output[-6000:]}"
    return output


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lightning_callback(tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "lightning_callback.py"), "--epochs", "1", "--limit", "128", "--val-limit", "64",
               "--batch-size", "32", "--no-progress", "--out", "logs"], tmp_path)
    found = re.search(r"augmented (\d+) of (\d+) batches with saliencymix", out)
    assert found, out[-3000:]
    augmented, seen = int(found[1]), int(found[2])
    assert seen == 4 and 0 <= augmented <= seen
    assert re.search(r"val_acc \d\.\d{3} \| pointing game \d\.\d{3} \| CAM box IoU \d\.\d{3}", out), out[-3000:]
    log_dir = tmp_path / "logs" / "version_0"
    assert is_png(log_dir / "salaug_monitor" / "epoch0000.png")
    pictures = list((log_dir / "salaug").glob("step*.png"))
    assert len(pictures) == (1 if augmented else 0) and all(is_png(p) for p in pictures)
    header = (log_dir / "metrics.csv").read_text().splitlines()[0]
    assert "salaug/augmented_epoch" in header and "salaug_monitor/pointing_game" in header


def test_lightning_callback_resnet18(tmp_path: Path) -> None:
    # torchvision ResNet-18 (random weights, 3x3 stem) with the CAM layer "net.layer4".
    out = run([str(EXAMPLES / "lightning_callback.py"), "--arch", "resnet18", "--method", "attentivecutmix",
               "--epochs", "1", "--limit", "32", "--val-limit", "16", "--batch-size", "16", "--size", "32",
               "--no-progress", "--out", "logs"], tmp_path)
    assert re.search(r"augmented \d+ of 2 batches with attentivecutmix", out), out[-3000:]
    assert is_png(tmp_path / "logs" / "version_0" / "salaug_monitor" / "epoch0000.png")


def test_cam_only_resnet18_local_weights(tmp_path: Path) -> None:
    import torchvision

    # A local state_dict file, as a user would pass trained weights (nothing is downloaded).
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    out = run([str(EXAMPLES / "cam_only.py"), "--arch", "resnet18", "--weights", "r18.pt", "--size", "64",
               "--num-images", "4", "--out", "grid.png"], tmp_path)
    assert "resnet18: gradcam on layer 'layer4', maps (4, 1, 64, 64)" in out, out[-3000:]
    assert "wrote grid.png" in out
    assert is_png(tmp_path / "grid.png")


def test_cam_only_explicit_layer(tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "cam_only.py"), "--arch", "mobilenet_v3_small", "--layer", "features.-1",
               "--method", "gradcam++", "--target", "3", "--size", "64", "--num-images", "2",
               "--out", "sub/mobilenet.png"], tmp_path)
    assert "mobilenet_v3_small: gradcam++ on layer 'features.12', maps (2, 1, 64, 64)" in out, out[-3000:]
    assert is_png(tmp_path / "sub" / "mobilenet.png")


def test_cam_only_vit_on_image_files(tmp_path: Path) -> None:
    from PIL import Image

    # Image files of different sizes and modes: resized, centre-cropped, converted to RGB.
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(80, 100, 3, generator=g) * 255).byte().numpy()).save(tmp_path / "a.png")
    Image.fromarray((torch.rand(50, 40, generator=g) * 255).byte().numpy(), mode="L").save(tmp_path / "b.jpg")
    out = run([str(EXAMPLES / "cam_only.py"), "a.png", "b.jpg", "--arch", "vit_b_16", "--method", "gradcam",
               "--size", "64", "--out", "vit.png"], tmp_path)
    assert "vit_b_16: gradcam on layer 'encoder.layers.encoder_layer_11.ln_1', maps (2, 1, 64, 64)" in out, out[-3000:]
    assert is_png(tmp_path / "vit.png")


def test_lightning_cli(tmp_path: Path) -> None:
    from pytorch_lightning.cli import _JSONARGPARSE_SIGNATURES_AVAILABLE

    if not _JSONARGPARSE_SIGNATURES_AVAILABLE:
        pytest.skip(f"LightningCLI needs {_JSONARGPARSE_SIGNATURES_AVAILABLE}")
    out = run([str(EXAMPLES / "lightning_cli.py"), "fit", "--config", str(EXAMPLES / "lightning_cli.yaml"),
               "--trainer.max_epochs", "1", "--data.limit", "128", "--data.val_limit", "64", "--data.batch_size", "32",
               "--trainer.default_root_dir", "cli", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false"], tmp_path)
    assert re.search(r"SaliencyAugmentation\(SaliencyMix, cam='gradcam', target_layer='features'\): "
                     r"augmented 4 of 4 batches", out), out[-3000:]
    assert re.search(r"SaliencyMonitor: .*pointing_game \d\.\d{3}", out), out[-3000:]
    configs = list((tmp_path / "cli").rglob("config.yaml"))
    assert len(configs) == 1
    saved = configs[0].read_text()
    # The nested transform was instantiated from its class_path, with the YAML's init_args.
    transform = re.search(r"class_path: salaug.SaliencyMix\s+init_args:\n((?:\s{8,}.*\n)+)", saved)
    assert transform, saved
    assert re.search(r"num_classes: 10\n", transform[1]) and re.search(r"\bp: 0\.5\n", transform[1]), saved
    assert re.search(r"\bbatch_p: 1\.0\n", saved) and re.search(r"\brecipe: true\n", saved), saved


def test_dataloader_collate(tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "dataloader_collate.py"), "--epochs", "1", "--limit", "256"], tmp_path)
    assert re.search(r"epoch 1/1: train loss \d+\.\d{3} .* val loss \d+\.\d{3} acc \d\.\d{3}", out), out[-3000:]


def test_plain_loop_with_checkpoint_and_resume(tmp_path: Path) -> None:
    common = [str(EXAMPLES / "plain_loop.py"), "--steps", "2", "--limit", "64", "--val-limit", "32",
              "--batch-size", "16", "--size", "32", "--warmup-steps", "1", "--checkpoint", "out/ckpt.pt"]
    out = run([*common, "--epochs", "1"], tmp_path)
    assert re.search(r"epoch 1/1: train loss \d+\.\d{3} .* val loss \d+\.\d{3} acc \d\.\d{3}", out), out[-3000:]
    assert re.search(r"augmented \d of 2 batches with snapmix \(1 in warm-up\)", out), out[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the checkpoint where it was asked, nothing else
    state = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert state["augmenter"]["steps"] == 2 and state["epoch"] == 0
    # resumed: the augmenter continues its stream (4 calls in all), the first epoch is not rerun
    out = run([*common, "--epochs", "2", "--resume", "out/ckpt.pt"], tmp_path)
    assert "epoch 1/2" not in out and re.search(r"epoch 2/2: train loss", out), out[-3000:]
    assert re.search(r"augmented \d of 4 batches with snapmix", out), out[-3000:]


def test_timm_style_loop(tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "timm_style_loop.py"), "--epochs", "2", "--steps", "2", "--limit", "64",
               "--batch-size", "16", "--size", "32", "--mixup-off-epoch", "1"], tmp_path)
    assert re.search(r"epoch 0: train loss \d+\.\d{3} \| val top-1 \d\.\d{3}", out), out[-3000:]
    # mixing stops at --mixup-off-epoch: at most the first epoch's 2 batches are mixed, of 4
    found = re.search(r"mixed (\d) of 4 batches", out)
    assert found and int(found[1]) <= 2, out[-3000:]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_fabric_loop_one_process(tmp_path: Path) -> None:
    pytest.importorskip("lightning.fabric")
    out = run([str(EXAMPLES / "fabric_loop.py"), "--epochs", "1", "--steps", "2", "--limit", "64"], tmp_path)
    assert re.search(r"epoch 1/1: loss \d+\.\d{3} \| val acc \d\.\d{3}", out), out[-3000:]
    assert "rank 0/1: augmenter rank 0, augmented" in out


def test_fabric_loop_ddp_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("lightning.fabric")
    out = run([str(EXAMPLES / "fabric_loop.py"), "--epochs", "1", "--steps", "2", "--limit", "128",
               "--devices", "2", "--strategy", "ddp"], tmp_path)
    # each process found its own rank in torch.distributed, so each draws its own stream
    assert re.search(r"rank 0/2: augmenter rank 0, augmented \d of 2 batches", out), out[-3000:]
    assert re.search(r"rank 1/2: augmenter rank 1, augmented \d of 2 batches", out), out[-3000:]


def test_demo(tmp_path: Path) -> None:
    out = run(["-m", "salaug", "demo", "--epochs", "1", "--train-size", "128", "--size", "32", "--batch-size", "32",
               "--val-size", "64", "--test-size", "64", "--compare", "--seeds", "1", "--no-progress", "--out", "demo"],
              tmp_path)
    row = r"\| {} \| 1 \| (\d\.\d{{3}} \| ){{6}}"
    assert re.search(row.format("snapmix"), out), out[-3000:]
    assert re.search(row.format("none") + r"n/a \| \d+ s \(1\.00x\) \|", out), out[-3000:]
    assert re.search(row.format("cutmix") + r"\d\.\d{3} \| \d+ s \(\d\.\d\dx\) \|", out), out[-3000:]
    assert "Verdict:" in out and "arm − none" in out  # the shift splits and the paired differences
    assert out.index("| none |") < out.index("| cutmix |") < out.index("| snapmix |")  # base-only first
    assert "standard recipe" in out
    demo = tmp_path / "demo"
    saved = torch.load(demo / "model.pt", weights_only=True)  # what `salaug diagnose --checkpoint` reads
    assert saved["state_dict"]["features.0.weight"].shape[0] == 16 and saved["salaug"]["image_size"] == 32
    assert (demo / "results.md").is_file() and (demo / "results.json").is_file()
    assert is_png(demo / "cam_overlays.png") and is_png(demo / "augmented.png") and is_png(demo / "accuracy.png")
    assert sorted(p.name for p in (demo / "runs").iterdir()) == ["cutmix", "none", "snapmix", "snapmix-flat"]
    assert list(tmp_path.iterdir()) == [demo]  # nothing outside --out


def test_examples_pass_no_deprecated_arguments() -> None:
    for path in [*EXAMPLES.glob("*.py"), *EXAMPLES.glob("*.yaml")]:
        text = path.read_text()
        assert not re.search(r"SaliencyAugment(?:er|ation)\([^)]*\bp=", text, re.S), path.name
        assert not re.search(r"^\s+p: 1\.0", text, re.M), path.name


def test_vit_transmix(tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "vit_transmix.py"), "--epochs", "1", "--limit", "128", "--test", "64"], tmp_path)
    line = r"epoch 0 \| loss (\d+\.\d+) \| test acc (\d\.\d{3}) \| attention moved (\d+) labels by (\d\.\d{3})"
    found = re.search(line, out)
    assert found, out[-3000:]
    assert float(found[1]) > 0 and 0 < int(found[3]) <= 128  # half the samples are mixed (p=0.5) per batch
    assert list(tmp_path.iterdir()) == []  # writes nothing


def test_finetune_local_weights_new_head_default_augmenter(tmp_path: Path) -> None:
    import torchvision

    # A local state_dict of the architecture (random here: nothing is downloaded), as a user passes ImageNet weights.
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pt")
    out = run([str(EXAMPLES / "finetune.py"), "--weights", "r18.pt", "--epochs", "1", "--per-class", "4",
               "--size", "64", "--test-size", "20"], tmp_path)
    assert ("resnet18 from local weights r18.pt, new 5-class head at 'fc', whole network; 20 training images at "
            "64 px; SnapMix via SaliencyAugmenter (labels_from='forward')") in out, out[-3000:]
    assert re.search(r"epoch 1/1: train loss \d+\.\d{3}", out), out[-3000:]
    assert re.search(r"test accuracy: in-distribution \d\.\d{3}, 40% occlusion \d\.\d{3}", out), out[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.pt"]  # writes nothing


def test_finetune_frozen_backbone_and_wrong_weights(tmp_path: Path) -> None:
    out = run([str(EXAMPLES / "finetune.py"), "--arch", "mobilenet_v3_small", "--freeze", "--epochs", "1",
               "--per-class", "4", "--size", "64", "--test-size", "20"], tmp_path)
    # the defaults run behind a frozen trunk too: the forward labels read the head's gradients only
    assert "random initialisation (no --weights), new 5-class head at 'classifier.3', head only" in out
    assert "labels_from='forward'" in out and "test accuracy: in-distribution" in out
    import torchvision

    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(EXAMPLES / "finetune.py"), "--weights", "r34.pt", "--epochs", "1",
                           "--per-class", "2", "--size", "64"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode != 0 and "Unexpected key(s) in state_dict" in done.stderr  # not silently ignored
