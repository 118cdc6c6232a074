r"""PuzzleMix-class mixing, batched: an energy-minimising block mask and optional block transport.

:class:`PuzzleMix` (after Kim et al., ICML 2020) cuts each image into an ``n x n`` block grid and
chooses, for every (target, partner) pair, which blocks come from the partner by minimising an
energy over the binary block mask ``z`` (``z_i = 1``: block ``i`` shows the partner):

.. math::

    E(z) = \sum_i \big[(1 - z_i)\,(s^p_i + \tfrac{\eta}{n^2} \ell^t) + z_i\,(s^t_i + \tfrac{\eta}{n^2} \ell^p)\big]
         + \frac{\beta}{16 n} \sum_{i \sim j} [z_i \ne z_j]
         + \frac{\gamma}{n^2} \Big(\sum_i z_i - \lambda n^2\Big)^2

``s^t`` / ``s^p`` are the target's and the partner's saliency summed per block (each map normalised
to sum 1, an all-zero map counts as uniform): a block taken from one image hides the other's mass
there. ``l^p = -log(lambda)`` and ``l^t = -log(1 - lambda)`` are the paper's label prior, with
``lambda ~ Beta(alpha, alpha)`` the partner's intended share; ``eta`` balances it against the
saliency. The Potts term (4-neighbours, the paper's ``beta / (16 n)`` scaling) makes the regions
compact, and the last term holds the partner's block count near ``lambda n^2`` (the unit is
blocks, so ``gamma`` means the same at every grid size). For ``n >= 2`` the mask takes at least
one block from each image (an empty or full mask would not mix).

:func:`solve_mask` minimises it for the whole batch at once: it scores every threshold of
several block orderings (the unary costs, two mean-field-smoothed versions of them, and eight
row / column fills from each corner), keeps the best, and runs a fixed number of best-single-flip
descent steps. Every step is a few tensor operations over ``(B, n^2)``; there is no per-sample loop
and no host sync. The exact minimum is checked by brute force in the tests (and against
``gco-wrapper``'s graph cut where installed).

With ``transport=True`` each image's blocks are also moved, as PuzzleMix does, so that its salient
blocks land in the region its mask shows: :func:`transport_blocks` finds a permutation of blocks
minimising ``move_cost * |moved distance|^2 - saliency shown`` by a batched auction (every free
block bids for its cheapest free destination, each destination keeps its cheapest bidder, a few
rounds) and pairs the blocks left over in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from salaug._checks import check_flag, check_float, check_int
from salaug.boxes import box_area, cell_index, cell_mass, cells_mask, grid_cells
from salaug.transforms._ops import masked, paste
from salaug.transforms.base import (
    MixTransform,
    Params,
    ParamSpec,
    sample_beta,
    sample_uniform,
)

__all__ = ["PuzzleMix", "block_costs", "mask_energy", "solve_mask", "transport_blocks"]

#: energy added to an empty or full mask for ``n >= 2`` (larger than any other term can reach)
_NOT_A_MIX = 1e3
#: the partner's intended share is clamped into ``[_LAM_EPS, 1 - _LAM_EPS]`` for the log prior
_LAM_EPS = 1e-4
#: grid sizes must have a least common multiple of at most this (masks are stored at that size)
_MAX_LCM = 64


# -- the energy ------------------------------------------------------------------------------------------------------
def pair_weight(beta: float, n: int) -> float:
    """The Potts weight of one cut edge on an ``n x n`` grid: ``beta / (16 n)``."""
    return beta / (16 * n)


def count_energy(count: Tensor, lam: Tensor, n: int, gamma: float) -> Tensor:
    """``gamma (count - lam n^2)^2 / n^2``, plus :data:`_NOT_A_MIX` for an empty or full mask (``n >= 2``)."""
    cells = n * n
    e = gamma * (count - lam * cells) ** 2 / cells
    if n >= 2:
        e = e + _NOT_A_MIX * ((count == 0) | (count == cells)).to(e.dtype)
    return e


def block_costs(target_mass: Tensor, partner_mass: Tensor, lam: Tensor, eta: float) -> Tensor:
    """Per-block cost of taking a block from the partner rather than from the target.

    Args:
        target_mass: ``(B, n, n)`` the target's saliency per block (sums to 1).
        partner_mass: ``(B, n, n)`` the partner's.
        lam: ``(B,)`` the partner's intended share.
        eta: weight of the label prior.

    Returns:
        ``(B, n, n)`` float32 ``s^t - s^p + eta / n^2 * (log(1 - lam) - log(lam))``: the unary
        part of :func:`mask_energy` up to a constant.

    Example:
        >>> t = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]); p = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
        >>> block_costs(t, p, torch.tensor([0.5]), eta=0.2).tolist()  # cheap to take the partner's peak
        [[[1.0, 0.0], [0.0, -1.0]]]
    """
    n = target_mass.shape[-1]
    lam = lam.to(torch.float32).clamp(_LAM_EPS, 1 - _LAM_EPS)
    prior = (eta / (n * n)) * (torch.log1p(-lam) - torch.log(lam))
    return (target_mass.float() - partner_mass.float()) + prior.view(-1, 1, 1)


def _cuts(z: Tensor) -> Tensor:
    """Number of 4-neighbour pairs with different values in each ``(..., n, n)`` mask."""
    return ((z[..., 1:, :] != z[..., :-1, :]).flatten(-2).sum(-1)
            + (z[..., :, 1:] != z[..., :, :-1]).flatten(-2).sum(-1))


def mask_energy(mask: Tensor, costs: Tensor, lam: Tensor, *, beta: float, gamma: float) -> Tensor:
    """The energy (module doc) of block masks, up to a per-sample constant.

    Args:
        mask: ``(B, n, n)`` bool, True where the block comes from the partner.
        costs: ``(B, n, n)`` from :func:`block_costs`.
        lam: ``(B,)`` the partner's intended share.
        beta: Potts weight (per cut edge ``beta / (16 n)``).
        gamma: weight of the share prior.

    Returns:
        ``(B,)`` float32.

    Example:
        >>> z = torch.tensor([[[True, False], [False, False]]])
        >>> round(mask_energy(z, torch.full((1, 2, 2), 0.25), torch.tensor([0.25]), beta=1.6, gamma=1.0).item(), 4)
        0.35
    """
    n = mask.shape[-1]
    z = mask.to(torch.float32)
    unary = (z * costs).flatten(1).sum(1)
    cuts = _cuts(mask.bool()).float()
    return unary + pair_weight(beta, n) * cuts + count_energy(z.flatten(1).sum(1), lam.float(), n, gamma)


# -- the solver -------------------------------------------------------------------------------------------------------
def _neighbour_sum(z: Tensor, n: int) -> Tensor:
    """Sum of the 4 neighbours of every cell of row-major ``(B, n * n)`` grids (zero outside).

    Shifted adds, not a matmul with the adjacency matrix: a tiny BLAS call on a busy multi-threaded
    CPU costs milliseconds of thread wake-ups, these elementwise ops microseconds.
    """
    g = z.view(-1, n, n)
    out = torch.zeros_like(g)
    out[:, 1:] += g[:, :-1]
    out[:, :-1] += g[:, 1:]
    out[:, :, 1:] += g[:, :, :-1]
    out[:, :, :-1] += g[:, :, 1:]
    return out.view(z.shape)


def _grid_edges(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The two endpoints ``(E,)`` (flat cell indices) of every 4-neighbour edge of an ``n x n`` grid."""
    idx = torch.arange(n * n, device=device).view(n, n)
    u = torch.cat((idx[:-1, :].flatten(), idx[:, :-1].flatten()))
    v = torch.cat((idx[1:, :].flatten(), idx[:, 1:].flatten()))
    return u, v


def _fill_orders(n: int, device: torch.device) -> Tensor:
    """``(8, n^2)`` keys: row-major and column-major fills starting from each corner."""
    r = torch.arange(n, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    keys = [(sa * a * n + sb * b).flatten() for a, b in ((yy, xx), (xx, yy)) for sa in (1, -1) for sb in (1, -1)]
    return torch.stack(keys)


def solve_mask(costs: Tensor, lam: Tensor, *, beta: float, gamma: float, steps: int | None = None) -> Tensor:
    """Minimise :func:`mask_energy` for a batch of block grids (batched, no host sync).

    1. Thresholds: for each of several block orderings (the costs; the costs smoothed by four
       mean-field steps of the Potts term at three temperatures; row- and column-major fills from
       the four corners, ties by cost) the first ``c`` blocks are taken for every count
       ``c = 0 .. n^2``; all these masks are scored at once (the cut edges of every threshold come
       from two histograms of the edges' endpoint ranks) and each sample keeps its best.
    2. Descent: ``steps`` times, each sample flips the one block that lowers its energy most (if
       any does). The step count is fixed, so the work does not depend on the data.

    Args:
        costs: ``(B, n, n)`` from :func:`block_costs` (plus any tie-breaking noise).
        lam: ``(B,)`` the partner's intended share.
        beta: Potts weight.
        gamma: share-prior weight.
        steps: descent steps (default ``2 n``; more rarely lower the energy further).

    Returns:
        ``(B, n, n)`` bool mask, True where the block comes from the partner.

    Example:
        >>> t = torch.tensor([[[0.7, 0.1], [0.1, 0.1]]]); p = torch.tensor([[[0.1, 0.1], [0.1, 0.7]]])
        >>> c = block_costs(t, p, torch.tensor([0.25]), eta=0.2)
        >>> solve_mask(c, torch.tensor([0.25]), beta=1.2, gamma=0.5).int().tolist()  # the partner's peak only
        [[[0, 0], [0, 1]]]
    """
    b, n, _ = costs.shape
    cells = n * n
    dev = costs.device
    costs = costs.to(torch.float32)
    lam = lam.to(torch.float32)
    w = pair_weight(beta, n)
    flat = costs.flatten(1)  # (B, N)
    counts = torch.arange(cells + 1, device=dev)
    count_e = count_energy(counts[None].float(), lam[:, None], n, gamma)  # (B, N + 1)

    # 1. thresholds of several orderings, scored all at once: keys (K, B, N)
    deg = _neighbour_sum(torch.ones(1, cells, device=dev), n)  # (1, N) neighbours of each cell
    keys = [flat]
    for temperature in (0.5, 1.0, 2.0):  # mean-field: a block whose neighbours lean to the partner is cheaper
        smooth = flat
        for _ in range(4):
            q = torch.sigmoid(smooth / -max(temperature * w, 1e-6))
            smooth = flat + w * (deg - 2 * _neighbour_sum(q, n))
        keys.append(smooth)
    fills = _fill_orders(n, dev)[:, None, :] + 1e-3 * torch.tanh(flat)[None]  # fills, ties by cost
    key = torch.cat((torch.stack(keys), fills))  # (K, B, N)
    order = key.argsort(dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(cells, device=dev).expand_as(order))
    unary = F.pad(flat.expand_as(key).gather(-1, order).cumsum(-1), (1, 0))  # (K, B, N + 1)
    u, v = _grid_edges(n, dev)
    lo = torch.minimum(rank[..., u], rank[..., v])
    hi = torch.maximum(rank[..., u], rank[..., v])
    # edge (u, v) is cut by threshold c iff lo < c <= hi
    ones = torch.ones_like(lo, dtype=torch.float32)
    starts = torch.zeros(*key.shape[:2], cells + 1, device=dev).scatter_add_(-1, lo + 1, ones).cumsum(-1)
    ends = torch.zeros(*key.shape[:2], cells + 1, device=dev).scatter_add_(-1, hi + 1, ones).cumsum(-1)
    energy = unary + w * (starts - ends) + count_e[None]  # (K, B, N + 1)
    best = energy.permute(1, 0, 2).reshape(b, -1).argmin(1)  # (B,) over (key, count)
    which, count = best // (cells + 1), best % (cells + 1)
    rank_best = rank.permute(1, 0, 2).gather(1, which.view(b, 1, 1).expand(b, 1, cells))[:, 0]
    z = (rank_best < count[:, None]).to(torch.float32)  # (B, N)

    # 2. best-single-flip descent
    # the energy change of flipping one cell, for the count term: up (0 -> 1) and down (1 -> 0)
    up = count_e.roll(-1, 1) - count_e
    down = count_e.roll(1, 1) - count_e
    for _ in range(2 * n if steps is None else steps):
        cnt = z.sum(1, keepdim=True).long()
        # flipping z_i changes the cut edges by (1 - 2 z_i) (deg_i - 2 s_i), s_i its neighbours' sum
        delta = (1 - 2 * z) * (flat + w * (deg - 2 * _neighbour_sum(z, n))) + torch.where(
            z > 0, down.gather(1, cnt), up.gather(1, cnt))
        at = delta.argmin(1, keepdim=True)  # argmin + gather: min with indices is slow on a busy CPU
        gain = delta.gather(1, at)
        cur = z.gather(1, at)
        z = z.scatter(1, at, torch.where(gain < -1e-7, 1 - cur, cur))
    return z.view(b, n, n) > 0.5


# -- transport --------------------------------------------------------------------------------------------------------
def _distance_cost(n: int, device: torch.device) -> Tensor:
    """``(N, N)`` squared distance between block centres, in units of the image side (``(n - 1)`` blocks)."""
    r = torch.arange(n, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    p = torch.stack((yy.flatten(), xx.flatten()), 1)
    return ((p[:, None] - p[None]) ** 2).sum(-1) / max(n - 1, 1) ** 2


def transport_blocks(mass: Tensor, region: Tensor, *, move_cost: float, rounds: int | None = None) -> Tensor:
    """A permutation of blocks that moves salient blocks into ``region``, batched.

    Minimises (approximately) ``sum_i move_cost * d(i, dest(i))^2 - m_i * region[dest(i)]`` over
    permutations, with ``m`` the block saliency normalised to a maximum of 1 and ``d`` the distance
    between block centres in units of the image side. A batched auction (deferred acceptance):
    each round, every block not yet placed bids for its cheapest destination among those it has
    not lost, and each destination keeps the cheapest bid (an earlier holder it beats is displaced
    and bids for its next destination). Each block's ``rounds + 1`` cheapest destinations are
    sorted once (``topk``), so a round is a few ``(B, N)`` operations.
    After ``rounds`` rounds the blocks still unplaced take the free destinations in row-major
    order, so the result is always a permutation.

    Args:
        mass: ``(B, N)`` non-negative block saliency, ``N = n^2`` (row-major blocks).
        region: ``(B, N)`` bool, the destinations where this image is shown.
        move_cost: weight of the squared move distance, ``>= 0``.
        rounds: auction rounds (default ``2 n``).

    Returns:
        ``(B, N)`` int64: for each destination block, the source block whose content it shows.

    Example:
        >>> m = torch.tensor([[1.0, 0.0, 0.0, 0.0]]); r = torch.tensor([[False, False, False, True]])
        >>> transport_blocks(m, r, move_cost=0.25).tolist()  # the salient block moves into the region
        [[3, 1, 2, 0]]
    """
    b, cells = mass.shape
    n = math.isqrt(cells)
    dev = mass.device
    m = mass.to(torch.float32)
    m = m / m.amax(1, keepdim=True).clamp(min=1e-12)
    cost = move_cost * _distance_cost(n, dev)[None] - m[:, :, None] * region[:, None, :].to(torch.float32)
    rows = torch.arange(cells, device=dev)
    rounds = 2 * n if rounds is None else rounds
    # each source's destinations from the cheapest: a bid that loses moves down the list
    depth = min(cells, rounds + 1)
    pref_cost, pref = cost.topk(depth, dim=2, largest=False, sorted=True)  # (B, N, depth)
    ptr = torch.zeros(b, cells, dtype=torch.long, device=dev)
    holder = torch.full((b, cells), -1, dtype=torch.long, device=dev)  # destination -> source placed there
    placed = torch.zeros(b, cells, dtype=torch.bool, device=dev)
    for _ in range(rounds):
        at = ptr.clamp(max=depth - 1)[:, :, None]
        bid = pref.gather(2, at)[:, :, 0]
        my_cost = pref_cost.gather(2, at)[:, :, 0]
        bidding = ~placed & (ptr < depth)
        bid_cost = my_cost.masked_fill(~bidding, float("inf"))
        held = holder >= 0
        holder_cost = my_cost.gather(1, holder.clamp(min=0)).masked_fill(~held, float("inf"))
        best_bid = torch.full((b, cells), float("inf"), device=dev).scatter_reduce(
            1, bid, bid_cost, reduce="amin", include_self=True)
        # the winning bidder of each destination: the cheapest, the lowest index on ties
        bidder = torch.where((bid_cost == best_bid.gather(1, bid)) & bidding, rows, cells)
        winner = torch.full((b, cells), cells, dtype=torch.long, device=dev).scatter_reduce(
            1, bid, bidder, reduce="amin", include_self=True)
        new_holder = torch.where((best_bid < holder_cost) & (winner < cells), winner, holder)
        placed = torch.zeros(b, cells + 1, dtype=torch.bool, device=dev).scatter_(
            1, torch.where(new_holder >= 0, new_holder, cells), True)[:, :cells]
        # losing bidders and displaced holders try their next destination
        displaced = held & (new_holder != holder)
        ptr = ptr + (bidding & ~placed) + torch.zeros_like(ptr).scatter_add_(
            1, holder.clamp(min=0), displaced.long())
        holder = new_holder
    # the leftovers: the k-th unplaced source takes the k-th free destination (row-major)
    free_src = (placed.long() * cells + rows).argsort(1)  # unplaced first, in order
    free_dst = ((holder >= 0).long() * cells + rows).argsort(1)
    nfree = cells - placed.sum(1, keepdim=True)
    fill = torch.empty_like(holder).scatter_(1, free_dst, torch.where(rows < nfree, free_src, -1))
    return torch.where(holder >= 0, holder, fill)


# -- pixels -----------------------------------------------------------------------------------------------------------
def _expand_blocks(z: Tensor, k: int) -> Tensor:
    """``(B, n, n)`` -> ``(B, n k, n k)``: every block repeated ``k x k`` times (nearest upsampling)."""
    return z.repeat_interleave(k, 1).repeat_interleave(k, 2)


def _sub_block_sources(src: Tensor, n: int, k: int) -> Tensor:
    """A block permutation ``(B, n^2)`` (destination -> source) as one over the ``(n k)^2`` sub-blocks."""
    big = n * k
    dev = src.device
    r = torch.arange(big, device=dev)
    block = ((r // k)[:, None] * n + (r // k)[None, :]).flatten()  # (L^2,) the block of each sub-block
    oy, ox = (r % k)[:, None].expand(big, big).flatten(), (r % k)[None, :].expand(big, big).flatten()
    s = src.gather(1, block.expand(src.shape[0], -1))  # (B, L^2) the source block of each sub-block
    return ((s // n) * k + oy) * big + (s % n) * k + ox


def _move_blocks(x: Tensor, take_partner: Tensor, perm: Tensor, sources: Tensor, grid: int) -> Tensor:
    """Assemble each output from moved sub-blocks of itself and of its partner.

    Output ``i``'s sub-block ``d`` (of an ``L x L`` grid, ``L = grid``) shows sub-block
    ``sources[i, 1, d]`` of ``x[perm[i]]`` where ``take_partner[i, d]``, else sub-block
    ``sources[i, 0, d]`` of ``x[i]``. One gather from the whole batch: exact block
    copies when ``L`` divides the image, else a nearest resampling of each sub-block (pixel offsets
    in the destination clamped into the source sub-block).

    Args:
        x: ``(B, C, H, W)``.
        take_partner: ``(B, L^2)`` bool.
        perm: ``(B,)`` partners.
        sources: ``(B, 2, L^2)`` int64 source sub-blocks (target's, partner's).
        grid: ``L``.

    Returns:
        ``(B, C, H, W)`` in ``x``'s dtype.
    """
    b, c, h, w = x.shape
    dev = x.device
    src = torch.where(take_partner, sources[:, 1], sources[:, 0])  # (B, L^2)
    img = torch.where(take_partner, perm[:, None], torch.arange(b, device=dev)[:, None])
    if h % grid == 0 and w % grid == 0:
        # one index_select of pixel rows one sub-block wide: output row (i, c, Y * bh + r, X) is
        # row (img, c, sy * bh + r, sx) of the input (about a copy's cost on CPU; a 6-d advanced
        # index or a block permute-gather-permute is 3x slower)
        bh = h // grid
        view = (b, 1, grid, 1, grid)
        sy, sx, im = (src // grid).view(view), (src % grid).view(view), img.view(view)
        ch = torch.arange(c, device=dev).view(1, c, 1, 1, 1)
        r = torch.arange(bh, device=dev).view(1, 1, 1, bh, 1)
        idx = (((im * c + ch) * h + sy * bh + r) * grid + sx).flatten()
        return x.reshape(b * c * h * grid, w // grid).index_select(0, idx).view(b, c, h, w)
    return _move_pixels(x, img, src, grid)


def _move_pixels(x: Tensor, img: Tensor, src: Tensor, grid: int) -> Tensor:
    """:func:`_move_blocks` for any image size: a per-pixel gather (sub-block edges ``floor(i H / L)``)."""
    b, c, h, w = x.shape
    dev = x.device

    def axis(size: int, which: Tensor, idx: Tensor) -> Tensor:
        edges = torch.arange(grid + 1, device=dev) * size // grid
        cell = cell_index(size, grid, dev)  # (size,)
        offset = torch.arange(size, device=dev) - edges[cell]
        span = edges[which + 1] - edges[which]
        return (edges[which] + torch.minimum(offset[idx], span - 1)).clamp(0, size - 1)

    cy, cx = cell_index(h, grid, dev), cell_index(w, grid, dev)
    sub = (cy[:, None] * grid + cx[None, :]).flatten()  # (H W,) the destination sub-block of each pixel
    s = src.gather(1, sub.expand(b, -1))  # (B, H W)
    pix = torch.arange(h * w, device=dev)
    rows = axis(h, s // grid, pix // w)
    cols = axis(w, s % grid, pix % w)
    bi = img.gather(1, sub.expand(b, -1))
    out = x[bi, :, rows, cols]  # (B, H W, C)
    return out.permute(0, 2, 1).reshape(b, c, h, w)


class _Level(NamedTuple):
    """One grid size of the set: ``n`` blocks a side, ``k = L / n`` sub-blocks a block side."""

    n: int
    k: int


class PuzzleMix(MixTransform):
    r"""PuzzleMix-class mixing: an energy-minimising block mask, optional block transport (Kim et al., 2020).

    Each sample ``i`` mixes with a partner ``j = perm[i]`` on an ``n x n`` block grid, ``n`` drawn
    per sample from ``grid``. The blocks taken from ``j`` minimise the energy of the module doc:
    keep both images' saliency visible (each block shows the image whose mass there is larger),
    keep the regions compact (Potts term ``beta``), and hold ``j``'s share near
    ``lambda ~ Beta(alpha, alpha)`` (``gamma``, with the paper's log prior weighted by ``eta``).
    The solve is batched (:func:`solve_mask`); blocks follow the edges ``floor(i * H / n)``, so any
    size works. With ``transport=True`` each image's blocks are first permuted
    (:func:`transport_blocks`) so its salient blocks move into the region its mask shows, at a cost
    ``move_cost`` per squared move distance (in image sides).

    Every grid size of ``grid`` is solved for the whole batch and each sample keeps its own, so no
    grid size is read back to the host (a per-batch size would be a Python int: a host sync for a
    generator on an accelerator). The solves work on ``n x n`` blocks, a negligible cost next to
    the pixels. Masks are stored at ``L = lcm(grid)`` sub-blocks a side, each sample's blocks
    repeated ``L / n`` times.

    Label: ``labels="area"`` (the paper's rule, the default): the partner's share is the area of the
    blocks it fills. ``labels="saliency"``: the partner's saliency mass shown (after transport)
    against the target's mass still shown (see :mod:`salaug.transforms.mix`; flat saliency gives
    exactly the area labels).

    Args:
        num_classes: number of classes, needed for ``(B,)`` integer labels.
        grid: the grid sizes ``n`` to draw from, each ``>= 1`` (an int: one size); their least
            common multiple must be at most 64. Images must be at least ``max(grid)`` pixels a side.
        alpha: concentration of ``Beta(alpha, alpha)`` for the partner's intended share, ``> 0``.
        beta: Potts (smoothness) weight, ``>= 0``.
        gamma: weight of the share prior, ``>= 0``.
        eta: weight of the paper's label prior against the saliency, ``>= 0``.
        transport: move each image's salient blocks into its region.
        move_cost: transport's cost per squared move distance (image sides), ``>= 0``.
        labels: ``"area"`` (the paper's) or ``"saliency"``.
        p: probability that each sample is mixed.
        generator: optional ``torch.Generator`` for reproducible sampling.

    Shape:
        - images: :math:`(B, C, H, W)` with :math:`H, W \ge \max(grid)`; saliency:
          :math:`(B, 1, H, W)` (or lower resolution); labels: :math:`(B,)` or :math:`(B, K)`.
        - Output: :class:`SalientBatch` (images, saliency moved and mixed the same way,
          :math:`(B, K)` labels).

    Params (``return_params=True``):
        ``applied`` ``(B,)`` bool, ``perm`` ``(B,)`` int64, ``blocks`` ``(B, L, L)`` bool (True:
        from the partner; all False where not applied), ``n`` ``(B,)`` int64 each sample's grid size,
        ``lam`` ``(B,)`` float32 the sampled intended share, and with ``transport=True``
        ``sources`` ``(B, 2, L * L)`` int64: for each sub-block of the output, the sub-block of the
        target (``[:, 0]``) and of the partner (``[:, 1]``) it shows (row-major; identity where not
        applied). A replay needs ``applied``, ``perm``, ``blocks`` (and ``sources``).

    Raises:
        TypeError: for a ``grid`` that is not an int or a sequence of ints.
        ValueError: for grid sizes below 1 or with a least common multiple above 64, ``alpha <= 0``,
            negative ``beta`` / ``gamma`` / ``eta`` / ``move_cost``, an unknown ``labels``, or (at
            call time) images smaller than the finest grid.

    Example:
        >>> import torch
        >>> x, s = torch.rand(4, 3, 16, 16), torch.rand(4, 1, 16, 16)
        >>> t = PuzzleMix(num_classes=4, p=1.0, generator=torch.Generator().manual_seed(0))
        >>> out, params = t(x, s, torch.arange(4), return_params=True)
        >>> out.images.shape, params["blocks"].shape, sorted(params)
        (torch.Size([4, 3, 16, 16]), torch.Size([4, 8, 8]), ['applied', 'blocks', 'lam', 'n', 'perm'])
        >>> torch.allclose(out.labels.sum(1), torch.ones(4))
        True
    """

    required_params: ClassVar[ParamSpec] = {**MixTransform.required_params, "blocks": ("bool", ("B", "L", "L"))}
    clamp_saliency = False  # pixels are copied, never resampled
    replay_options = ("transport",)

    def __init__(self, num_classes: int | None = None, *, grid: int | Sequence[int] = (2, 4, 8), alpha: float = 1.0,
                 beta: float = 1.2, gamma: float = 0.5, eta: float = 0.2, transport: bool = False,
                 move_cost: float = 0.25, labels: Literal["area", "saliency"] = "area", p: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(num_classes, labels=labels, p=p, generator=generator)
        sizes = [grid] if isinstance(grid, int) and not isinstance(grid, bool) else grid
        if isinstance(sizes, (str, bytes, Tensor)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
            raise TypeError(f"grid must be a positive int or a non-empty sequence of positive ints, got {grid!r}; "
                            "pass e.g. grid=(2, 4, 8)")
        self.grid = tuple(check_int(f"grid[{i}]", g, low=1) for i, g in enumerate(sizes))
        lcm = reduce(math.lcm, self.grid)
        if lcm > _MAX_LCM:
            raise ValueError(f"grid sizes {self.grid} have a least common multiple of {lcm}, above {_MAX_LCM}; "
                             "use sizes that divide a small number, e.g. grid=(2, 4, 8)")
        self.alpha = check_float("alpha", alpha, low=0.0, low_open=True)
        self.beta = check_float("beta", beta, low=0.0)
        self.gamma = check_float("gamma", gamma, low=0.0)
        self.eta = check_float("eta", eta, low=0.0)
        self.transport = check_flag("transport", transport)
        self.move_cost = check_float("move_cost", move_cost, low=0.0)
        self._lcm = lcm
        self._levels = tuple(_Level(n, lcm // n) for n in sorted(set(self.grid)))

    # -- params --------------------------------------------------------------------------------------------------------
    def param_dims(self, images: Tensor) -> dict[str, int]:
        return {**super().param_dims(images), "L": self._lcm, "L2": self._lcm ** 2}

    def param_spec(self) -> ParamSpec:
        if not self.transport:
            return self.required_params
        return {**self.required_params, "sources": ("int", ("B", 2, "L2"))}

    def _check_size(self, h: int, w: int) -> None:
        finest = max(self.grid)
        if h < finest or w < finest:
            raise ValueError(f"a {finest}x{finest} block grid needs images of at least {finest}x{finest}, got {h}x{w}; "
                             "use a coarser grid, e.g. grid=(2, 4)")

    # -- sampling ------------------------------------------------------------------------------------------------------
    def sample_mix(self, images: Tensor, saliency: Tensor, applied: Tensor, perm: Tensor) -> dict[str, Tensor]:
        b, _, h, w = images.shape
        self._check_size(h, w)
        dev, g = images.device, self.active_generator
        big = self._lcm
        lam = sample_beta(self.alpha, self.alpha, (b,), dev, g)
        level = (sample_uniform((b,), dev, g) * len(self._levels)).long().clamp(max=len(self._levels) - 1)
        tie = sample_uniform((b, big, big), dev, g) - 0.5  # breaks ties at random (flat maps)
        mass = cell_mass(saliency, (big, big)).view(b, big, big)  # (B, L, L), each map sums to 1
        rows = torch.arange(big * big, device=dev)
        blocks, sources = [], []
        for lv in self._levels:
            m = mass.view(b, lv.n, lv.k, lv.n, lv.k).sum((2, 4))
            noise = tie.view(b, lv.n, lv.k, lv.n, lv.k).mean((2, 4)) * (1e-4 / lv.n ** 2)
            costs = block_costs(m, m[perm], lam, self.eta) + noise
            z = solve_mask(costs, lam, beta=self.beta, gamma=self.gamma)
            blocks.append(_expand_blocks(z, lv.k))
            if self.transport:
                cells = lv.n * lv.n
                both = transport_blocks(torch.cat((m.view(b, cells), m[perm].view(b, cells))),
                                        torch.cat((~z.view(b, cells), z.view(b, cells))), move_cost=self.move_cost)
                sources.append(torch.stack((_sub_block_sources(both[:b], lv.n, lv.k),
                                            _sub_block_sources(both[b:], lv.n, lv.k)), 1))
        pick = level.view(1, b, 1, 1)
        z_all = torch.stack(blocks).gather(0, pick.expand(1, b, big, big))[0] & applied.view(b, 1, 1)
        n_of = sum((level == i).long() * lv.n for i, lv in enumerate(self._levels))  # no host-to-device copy
        out: dict[str, Tensor] = {"blocks": z_all, "n": torch.as_tensor(n_of), "lam": lam}
        if self.transport:
            src = torch.stack(sources).gather(0, pick.view(1, b, 1, 1).expand(1, b, 2, big * big))[0]
            out["sources"] = torch.where(applied.view(b, 1, 1), src, rows)
        return out

    # -- pixels and labels ---------------------------------------------------------------------------------------------
    def pixel_plan(self, params: Params, size: tuple[int, int]) -> Any:
        self._check_size(*size)
        z = params["blocks"] & params["applied"].view(-1, 1, 1)
        if self.transport:
            return z.flatten(1)
        return masked(cells_mask(z.flatten(1), (self._lcm, self._lcm), size), params["applied"])

    def mix_pixels(self, x: Tensor, params: Params, plan: Any, *, is_saliency: bool = False) -> Tensor:
        if self.transport:
            return _move_blocks(x, plan, params["perm"], params["sources"], self._lcm)
        return paste(plan, x[params["perm"]], x)

    def area_share(self, params: Params, size: tuple[int, int]) -> Tensor:
        z = params["blocks"].flatten(1)
        cell_area = box_area(grid_cells(size, (self._lcm, self._lcm), z.device)) / (size[0] * size[1])
        return (z.to(cell_area.dtype) * cell_area).sum(1)  # not a BLAS call (see _neighbour_sum)

    def saliency_masses(self, saliency: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        z = params["blocks"].flatten(1).to(torch.float32)
        mass = cell_mass(saliency, (self._lcm, self._lcm))  # (B, L^2), each row sums to 1
        partner = mass[params["perm"]]
        if self.transport:
            src = params["sources"]
            mass, partner = mass.gather(1, src[:, 0]), partner.gather(1, src[:, 1])
        return ((1 - z) * mass).sum(1), (z * partner).sum(1)
