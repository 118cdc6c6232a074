"""PuzzleMix: the transform contract, the block-mask solver against exact minima, the transport, the labels."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from salaug.transforms.puzzle import (
    PuzzleMix,
    _cuts,
    _move_blocks,
    _move_pixels,
    block_costs,
    mask_energy,
    solve_mask,
    transport_blocks,
)
from test_transform_contract import K, batch, check_out

TRANSPORT = [False, True]


def make(seed=0, device="cpu", **kw):
    kw.setdefault("num_classes", K)
    kw.setdefault("p", 1.0)
    return PuzzleMix(generator=torch.Generator(device=device).manual_seed(seed), **kw)


def pixel_mask(params, size):
    """(B, 1, H, W) bool: pixels from the partner (the block mask upsampled by nearest)."""
    z = params["blocks"].float()[:, None]
    return F.interpolate(z, size=size, mode="nearest") > 0.5


# -- contract --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORT)
def test_output_contract_dtypes_and_devices(transport, dtype, device):
    x, s, y = batch(dtype=dtype, device=device)
    out = make(device=device, transport=transport)(x, s, y)
    check_out(out, x)
    assert ((out.labels > 0).sum(1) <= 2).all()
    ref = make(device=device, transport=transport)(x.float(), s, y)
    assert torch.equal(out.images.float(), ref.images.to(dtype).float())  # pixels are copied, never blended
    assert torch.equal(out.labels, ref.labels)


@pytest.mark.parametrize("transport", TRANSPORT)
def test_pixels_come_from_the_target_or_the_partner_as_the_mask_says(transport):
    x, s, y = batch()
    out, params = make(transport=transport)(x, s, y, return_params=True)
    mask = pixel_mask(params, (16, 16))
    if not transport:
        want = torch.where(mask, x[params["perm"]], x)
        assert torch.equal(out.images, want)
        assert torch.equal(out.saliency, torch.where(mask, s[params["perm"]], s))
    # area labels: the partner's share is its pixel share; every applied mix takes from both images
    share = mask.float().mean((1, 2, 3))
    onehot = F.one_hot(y, K).float()
    torch.testing.assert_close(out.labels, onehot.lerp(onehot[params["perm"]], share[:, None]))
    assert ((share > 0) & (share < 1)).all()
    assert set(params["n"].tolist()) <= {2, 4, 8}


@pytest.mark.parametrize("transport", TRANSPORT)
def test_p0_is_the_identity_and_p1_mixes_every_sample(transport):
    x, s, y = batch(b=16)
    out, params = make(p=0.0, transport=transport)(x, s, y, return_params=True)
    assert not params["applied"].any() and not params["blocks"].any()
    assert torch.equal(out.images, x) and torch.equal(out.saliency, s)
    assert torch.equal(out.labels, F.one_hot(y, K).float())
    out, params = make(p=1.0, transport=transport)(x, s, y, return_params=True)
    assert params["applied"].all()
    moved = (out.images != x).flatten(1).any(1)
    assert moved[params["perm"] != torch.arange(16)].all()


def test_default_p_is_half_and_drawn_once_per_sample():
    x, s, y = batch(b=400, size=(8, 8))
    t = PuzzleMix(K, generator=torch.Generator().manual_seed(0))
    assert t.p == 0.5
    out, params = t(x, s, y, return_params=True)
    applied = params["applied"]
    assert abs(applied.float().mean().item() - 0.5) < 0.08
    changed = (out.images != x).flatten(1).any(1)
    assert not (changed & ~applied).any()
    assert changed[applied].float().mean() > 0.97  # only a sample paired with itself is unchanged


@pytest.mark.parametrize("transport", TRANSPORT)
def test_replay_reproduces_and_refuses_params_of_another_batch(transport, device):
    x, s, y = batch(device=device)
    t = make(device=device, transport=transport)
    out, params = t(x, s, y, return_params=True)
    state = t.generator.get_state()
    again = t(x, s, y, params=params)
    assert torch.equal(t.generator.get_state(), state)
    for u, v in zip(out, again):
        assert torch.equal(u, v)
    plain = {k: v.clone() for k, v in params.items() if k in ("applied", "perm", "blocks", "sources")}
    assert torch.equal(t(x, s, y, params=plain).images, out.images)  # the required keys suffice
    with pytest.raises(ValueError, match="batch"):
        t(x[:4], s[:4], y[:4], params=params)
    with pytest.raises(ValueError, match="blocks"):  # a mask of another grid
        t(x, s, y, params={**plain, "blocks": plain["blocks"][:, :4, :4]})
    if transport:
        missing = {k: v for k, v in plain.items() if k != "sources"}
        with pytest.raises(ValueError, match="sources"):
            t(x, s, y, params=missing)
    else:  # params without transport do not replay on a transporting PuzzleMix
        with pytest.raises(ValueError, match="sampled by PuzzleMix\\(transport=False\\)"):
            make(device=device, transport=True)(x, s, y, params=params)
        with pytest.raises(ValueError, match="sources"):  # a plain dict has no record: the missing key is named
            make(device=device, transport=True)(x, s, y, params=plain)


@pytest.mark.parametrize("transport", TRANSPORT)
def test_generator_reproducibility(transport):
    x, s, y = batch()
    a = make(seed=3, p=0.7, transport=transport)(x, s, y)
    b = make(seed=3, p=0.7, transport=transport)(x, s, y)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = make(seed=1, p=0.7, transport=transport)(x, s, y, generator=torch.Generator().manual_seed(3))
    for u, v in zip(a, c):
        assert torch.equal(u, v)
    d = make(seed=4, p=0.7, transport=transport)(x, s, y)
    assert not torch.equal(a.images, d.images)


@pytest.mark.parametrize("transport", TRANSPORT)
def test_any_size_layout_and_gradients(transport):
    x, s, y = batch(b=4, size=(9, 13))  # blocks of unequal sizes
    out = make(transport=transport)(x, s, y)
    check_out(out, x)
    x, s, y = batch()
    ref, params = make(transport=transport)(x, s, y, return_params=True)
    cl = make(transport=transport)(x.contiguous(memory_format=torch.channels_last), s, y)
    assert torch.equal(cl.images, ref.images)
    xg = x.clone().requires_grad_(True)
    out = make(transport=transport)(xg, s, y, params=params)
    out.images.sum().backward()
    assert torch.equal(out.images.detach(), ref.images)
    assert xg.grad is not None and xg.grad.sum() == x.numel()  # every output pixel comes from one input pixel


# -- the solver ------------------------------------------------------------------------------------------------------
def _problems(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    st = torch.rand(b, n, n, generator=g) ** 3
    sp = torch.rand(b, n, n, generator=g) ** 3
    lam = torch.rand(b, generator=g)
    costs = block_costs(st / st.sum((1, 2), keepdim=True), sp / sp.sum((1, 2), keepdim=True), lam, eta=0.2)
    return costs, lam


def _brute_force(costs, lam, beta, gamma):
    b, n, _ = costs.shape
    masks = torch.tensor(list(itertools.product([False, True], repeat=n * n))).view(-1, n, n)
    m = masks.shape[0]
    e = mask_energy(masks.repeat(b, 1, 1), costs.repeat_interleave(m, 0), lam.repeat_interleave(m),
                    beta=beta, gamma=gamma)
    return e.view(b, m).min(1).values


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("beta,gamma", [(1.2, 0.5), (0.0, 0.5), (5.0, 0.5), (1.2, 5.0)])
def test_solver_against_brute_force(n, beta, gamma):
    costs, lam = _problems(150, n, seed=n)
    exact = _brute_force(costs, lam, beta, gamma)
    got = mask_energy(solve_mask(costs, lam, beta=beta, gamma=gamma), costs, lam, beta=beta, gamma=gamma)
    gap = got - exact
    print(f"\n{n}x{n} beta={beta} gamma={gamma}: energy gap mean {gap.mean():.2e}, worst {gap.max():.2e}, "
          f"non-optimal {(gap > 1e-5).float().mean():.1%}")
    assert (gap > -1e-5).all()  # nothing beats the exact minimum
    if n == 2 or beta == 0:
        assert (gap < 1e-5).all()  # exact: 2x2, and without smoothness (thresholds are optimal)
    else:
        assert gap.mean() < 2e-3 and (gap > 1e-5).float().mean() < 0.05


@pytest.mark.parametrize("n", [4, 8])
def test_solver_against_graph_cut(n):
    gco = pytest.importorskip("gco")
    beta = 1.2
    costs, lam = _problems(60, n, seed=10 + n)
    got = mask_energy(solve_mask(costs, lam, beta=beta, gamma=0.0), costs, lam, beta=beta, gamma=0.0)
    scale = 1e6  # gco minimises integer energies: costs in millionths
    w = round(scale * beta / (16 * n))
    gaps = []
    for i in range(costs.shape[0]):  # gamma=0: unary + Potts, which a graph cut minimises exactly
        c = (scale * costs[i].double()).round()
        unary = torch.stack((F.relu(-c), F.relu(c)), -1).int().numpy()  # label 1 (partner) costs c more
        labels = gco.cut_grid_graph(unary, (1 - torch.eye(2, dtype=torch.int32)).numpy(),
                                    torch.full((n - 1, n), w, dtype=torch.int32).numpy(),
                                    torch.full((n, n - 1), w, dtype=torch.int32).numpy(), algorithm="expansion")
        z = torch.from_numpy(labels.reshape(n, n)).bool()
        if 0 < z.sum() < n * n:  # the graph cut knows no "take from both" rule
            gaps.append((got[i] - mask_energy(z[None], costs[i:i + 1], lam[i:i + 1], beta=beta, gamma=0.0)[0]).item())
    gaps = torch.tensor(gaps)
    print(f"\n{n}x{n} vs gco alpha-expansion ({len(gaps)} problems): gap mean {gaps.mean():.2e}, "
          f"worst {gaps.max():.2e}, non-optimal {(gaps > 1e-5).float().mean():.0%}")
    assert len(gaps) > 20 and (gaps > -1e-5).all()  # nothing beats the exact minimum
    assert gaps.mean() < (1e-3 if n == 4 else 1e-2) and gaps.max() < 0.05


def test_share_tracks_lambda():
    # flat maps, no smoothness, no log prior: the share is lambda rounded to whole blocks
    b, n = 200, 4
    lam = torch.rand(b, generator=torch.Generator().manual_seed(0))
    flat = torch.full((b, n, n), 1.0 / n ** 2)
    z = solve_mask(block_costs(flat, flat, lam, eta=0.0), lam, beta=0.0, gamma=0.5)
    want = (lam * n * n).round().clamp(1, n * n - 1)
    assert torch.equal(z.flatten(1).sum(1).float(), want)
    # the transform, default weights, saliency of real contrast: the share follows lambda
    x, s, y = batch(b=400, size=(16, 16), seed=1)
    _, params = make(seed=2)(x, s, y, return_params=True)
    share = params["blocks"].float().mean((1, 2))
    corr = torch.corrcoef(torch.stack((share, params["lam"])))[0, 1]
    assert corr > 0.8, corr
    assert abs(share.mean() - params["lam"].mean()) < 0.05


def test_larger_beta_gives_fewer_boundary_edges():
    costs, lam = _problems(200, 8, seed=3)
    cuts = [_cuts(solve_mask(costs, lam, beta=beta, gamma=0.5)).float().mean().item() for beta in (0.0, 1.2, 8.0)]
    assert cuts[0] > cuts[1] > cuts[2], cuts


def test_each_block_shows_the_image_with_more_saliency_there():
    # target salient top-left, partner salient bottom-right: the mix shows both objects
    st = torch.zeros(1, 4, 4)
    st[0, 0, 0] = 1.0
    sp = torch.zeros(1, 4, 4)
    sp[0, 3, 3] = 1.0
    lam = torch.tensor([0.5])
    z = solve_mask(block_costs(st, sp, lam, eta=0.2), lam, beta=1.2, gamma=0.5)
    assert not z[0, 0, 0] and z[0, 3, 3]


# -- transport -------------------------------------------------------------------------------------------------------
def test_transport_moves_a_salient_block_into_the_only_region():
    mass = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    src = transport_blocks(mass, torch.tensor([[False, False, False, True]]), move_cost=0.25)
    assert src[0, 3] == 0 and sorted(src[0].tolist()) == [0, 1, 2, 3]
    # 4x4: the salient corner block lands on the nearest block of the bottom-right 2x2 region
    mass = torch.zeros(1, 16)
    mass[0, 0] = 1.0
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[2:, 2:] = True
    src = transport_blocks(mass, region.view(1, 16), move_cost=0.25)
    assert src[0, 10] == 0
    # already in the region: nothing moves
    region = torch.zeros(1, 16, dtype=torch.bool)
    region[0, :2] = True
    assert torch.equal(transport_blocks(mass, region, move_cost=0.25), torch.arange(16)[None])
    # too far for a weak block: it stays
    mass = torch.zeros(1, 4)
    mass[0, 0] = 1.0
    mass[0, 1] = 0.2
    src = transport_blocks(mass, torch.tensor([[False, False, False, True]]), move_cost=0.25)
    assert src[0, 3] == 0 and src[0, 1] == 1


def test_transport_is_a_permutation_that_shows_more_saliency():
    g = torch.Generator().manual_seed(0)
    for n in (2, 4, 8):
        mass = torch.rand(64, n * n, generator=g) ** 4
        region = torch.rand(64, n * n, generator=g) < 0.4
        src = transport_blocks(mass, region, move_cost=0.25)
        assert torch.equal(src.sort(1).values, torch.arange(n * n).expand(64, -1))
        shown = (mass.gather(1, src) * region).sum(1)
        assert (shown >= (mass * region).sum(1) - 1e-6).all() and (shown > (mass * region).sum(1)).any()


def test_move_blocks_copies_sub_blocks_on_any_size():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 16, 24, generator=g)
    perm = torch.tensor([2, 0, 1])
    sources = torch.stack([torch.stack([torch.randperm(16, generator=g) for _ in range(2)]) for _ in range(3)])
    take = torch.rand(3, 16, generator=g) < 0.5
    fast = _move_blocks(x, take, perm, sources, 4)
    img = torch.where(take, perm[:, None], torch.arange(3)[:, None])
    assert torch.equal(fast, _move_pixels(x, img, torch.where(take, sources[:, 1], sources[:, 0]), 4))
    blocks = x.view(3, 2, 4, 4, 4, 6)
    for i, d in ((0, 0), (1, 7), (2, 15)):
        j = perm[i] if take[i, d] else i
        sblock = sources[i, 1 if take[i, d] else 0, d]
        want = blocks[j, :, sblock // 4, :, sblock % 4, :]
        assert torch.equal(fast.view(3, 2, 4, 4, 4, 6)[i, :, d // 4, :, d % 4, :], want)


def test_transport_shows_more_of_both_objects():
    b, size = 64, (16, 16)
    x, _, y = batch(b=b, size=size)
    s = torch.zeros(b, 1, *size)
    g = torch.Generator().manual_seed(5)
    corner = torch.randint(0, 4, (b, 2), generator=g) * 4
    for i in range(b):  # one 4x4 object per image
        s[i, 0, corner[i, 0]:corner[i, 0] + 4, corner[i, 1]:corner[i, 1] + 4] = 1.0

    def shown(t):
        out, params = t(x, s, y, return_params=True)
        return out.saliency.sum((1, 2, 3)).mean()  # each output shows up to two objects of 16 pixels

    plain = shown(make(seed=0, grid=4, beta=5.0))
    moved = shown(make(seed=0, grid=4, beta=5.0, transport=True))
    assert moved >= plain


# -- labels ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORT)
def test_saliency_labels_with_flat_saliency_are_the_area_labels(transport):
    x, _, y = batch()
    for s in (torch.zeros(8, 1, 16, 16), torch.full((8, 1, 16, 16), 0.5)):
        area = make(transport=transport)(x, s, y)
        sal = make(transport=transport, labels="saliency")(x, s, y)
        assert torch.equal(area.labels, sal.labels)


@pytest.mark.parametrize("transport", TRANSPORT)
def test_saliency_labels_are_the_masses_shown(transport):
    x, s, y = batch()
    out, params = make(transport=transport, labels="saliency")(x, s, y, return_params=True)
    mask = pixel_mask(params, (16, 16))
    perm = params["perm"]
    kept = (out.saliency * ~mask).sum((1, 2, 3)) / s.sum((1, 2, 3))
    pasted = (out.saliency * mask).sum((1, 2, 3)) / s[perm].sum((1, 2, 3))
    share = pasted / (kept + pasted)
    onehot = F.one_hot(y, K).float()
    torch.testing.assert_close(out.labels, onehot.lerp(onehot[perm], share[:, None]), atol=1e-5, rtol=0)


# -- bad input ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"grid": 0}, ValueError, r"grid\[0\] must be an int >= 1"),
    ({"grid": (2, 0)}, ValueError, r"grid\[1\]"),
    ({"grid": (2, 2.5)}, TypeError, r"grid\[1\]"),
    ({"grid": "4"}, TypeError, "grid must be"),
    ({"grid": ()}, TypeError, "grid must be"),
    ({"grid": (7, 11)}, ValueError, "least common multiple of 77"),
    ({"alpha": 0.0}, ValueError, "alpha must be"),
    ({"beta": -1.0}, ValueError, "beta must be"),
    ({"gamma": -0.1}, ValueError, "gamma must be"),
    ({"eta": float("nan")}, ValueError, "eta must be"),
    ({"move_cost": -1.0}, ValueError, "move_cost must be"),
    ({"transport": 1}, TypeError, "transport must be True or False"),
    ({"labels": "mass"}, ValueError, "labels must be one of"),
    ({"p": 1.5}, ValueError, "p must be"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        PuzzleMix(K, **kwargs)


def test_images_smaller_than_the_grid_are_refused():
    x, s, y = batch(size=(6, 6))
    with pytest.raises(ValueError, match="8x8 block grid needs images of at least 8x8, got 6x6"):
        make()(x, s, y)
    check_out(make(grid=(2, 3, 6))(x, s, y), x)


def test_arguments_are_keyword_only_and_repr():
    with pytest.raises(TypeError, match="positional"):
        PuzzleMix(K, (2, 4))
    assert repr(PuzzleMix(K)) == ("PuzzleMix(num_classes=5, grid=(2, 4, 8), alpha=1.0, beta=1.2, gamma=0.5, eta=0.2, "
                                  "transport=False, move_cost=0.25, labels='area', p=0.5)")
