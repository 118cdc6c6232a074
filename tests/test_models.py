"""The small reference networks: shapes, the ViT builder's structure and its bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

import salaug.cam as sc
from salaug.cam.attention import cls_attention, find_attention
from salaug.models import DemoNet, ResNet8, tiny_vit


@pytest.mark.parametrize("build", [lambda: DemoNet(10, width=8), lambda: ResNet8(10, width=8)])
def test_cnn_output_shape(build):
    assert build()(torch.rand(3, 3, 32, 32)).shape == (3, 10)


def test_tiny_vit_structure_and_output():
    torch.manual_seed(0)
    vit = tiny_vit(num_classes=7, num_layers=3, num_heads=4, hidden_dim=48, mlp_dim=96)
    assert isinstance(vit, VisionTransformer)
    assert len(vit.encoder.layers) == 3 and vit.seq_length == 1 + 8 * 8
    assert vit.encoder.layers[0].mlp[0].out_features == 96
    assert vit(torch.rand(5, 3, 32, 32)).shape == (5, 7)
    name, attn = find_attention(vit)
    assert attn is vit.encoder.layers[-1].self_attention and name == "encoder.layers.encoder_layer_2.self_attention"
    assert attn.num_heads == 4 and attn.embed_dim == 48 and attn.batch_first


def test_tiny_vit_defaults_and_seed():
    torch.manual_seed(1)
    a = tiny_vit()
    torch.manual_seed(1)
    b = tiny_vit()
    assert len(a.encoder.layers) == 4 and a.hidden_dim == 64 and a.mlp_dim == 128 and a.patch_size == 4
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.heads.head.out_features == 10
    convs = [m for m in a.conv_proj.modules() if isinstance(m, nn.Conv2d)]  # the default conv stem
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)] and convs[-1].out_channels == 64


@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_tiny_vit_stems_keep_the_token_grid(stem):
    torch.manual_seed(0)
    vit = tiny_vit(num_classes=3, image_size=16, patch_size=4, num_layers=1, hidden_dim=32, mlp_dim=64, stem=stem)
    tokens = vit._process_input(torch.rand(2, 3, 16, 16))
    assert tokens.shape == (2, 16, 32)
    assert isinstance(vit.conv_proj, nn.Conv2d) == (stem == "patch")


def test_tiny_vit_default_stem_fits_a_small_task():
    """The default (conv stem) model trains: 40 full-batch steps fit a batch of two separable classes."""
    torch.manual_seed(0)
    x = torch.rand(32, 3, 16, 16) * 0.2
    y = torch.arange(32) % 2
    x[y == 1, :, 4:12, 4:12] += 0.6  # class 1: a bright square somewhere in the middle
    vit = tiny_vit(num_classes=2, image_size=16, patch_size=4, num_layers=1, hidden_dim=32, mlp_dim=64)
    opt = torch.optim.Adam(vit.parameters(), lr=3e-3)
    for _ in range(40):
        loss = nn.functional.cross_entropy(vit(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3


def test_tiny_vit_trains_and_feeds_the_attention_and_cam_paths():
    torch.manual_seed(2)
    vit = tiny_vit(num_classes=3, num_layers=2, hidden_dim=32, mlp_dim=64)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    nn.functional.cross_entropy(vit(x), y).backward()
    assert all(p.grad is not None for p in vit.parameters())
    seen = []
    attn = find_attention(vit)[1]
    handle = attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    vit(x)
    handle.remove()
    row = cls_attention(attn, seen[0])
    assert row.shape == (4, 64) and bool((row > 0).all())
    sal = sc.GradCAM(vit.eval(), "encoder.layers.-1", reshape=sc.vit_reshape)(x)
    assert sal.shape == (4, 1, 32, 32)


def test_tiny_vit_bad_arguments():
    with pytest.raises(ValueError, match="patch_size=5 must divide image_size=32"):
        tiny_vit(patch_size=5)
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_dim=64"):
        tiny_vit(num_heads=3)
    with pytest.raises(ValueError, match="num_layers must be an int >= 1"):
        tiny_vit(num_layers=0)
    with pytest.raises(TypeError, match="hidden_dim must be an int"):
        tiny_vit(hidden_dim=64.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_size must be a power of two, got 6; use patch_size=4 or stem='patch'"):
        tiny_vit(image_size=36, patch_size=6)
    tiny_vit(image_size=36, patch_size=6, stem="patch")  # a linear patch embedding takes any divisor
    with pytest.raises(ValueError, match="stem"):
        tiny_vit(stem="convolutional")  # type: ignore[arg-type]
