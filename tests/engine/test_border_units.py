"""Border units (docs/methods.md, "Units that project"): by default the strongest unit of a channel
is chosen among the units with >= 50% of their receptive field inside the image; ``--position
any`` restores the plain strongest. The receptive fields here are worked out by hand for a
conv3(pad 1) - conv3(stride 2, pad 1) - conv3(pad 1) net on a 16 x 16 input: unit y covers input
rows 2y - 4 .. 2y + 4 (9 pixels)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

import zfprobe

sys.path.insert(0, str(Path(__file__).parents[1]))
import nets  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        self.c3 = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.a1(self.c1(x)))))


def hand_fractions() -> np.ndarray:
    per_axis = np.array([(min(2 * y + 4, 15) - max(2 * y - 4, 0) + 1) / 9 for y in range(8)])
    return np.outer(per_axis, per_axis)


def test_inside_fractions_by_hand():
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import inside_fractions

    probe = zfprobe.attach(nets._init_(Net(), 3), np.zeros((1, 3, 16, 16), np.float32))
    rf = receptive_field(probe.graph, probe.resolve("c3"), "NCHW")
    np.testing.assert_allclose(inside_fractions(rf, (8, 8)), hand_fractions(), atol=1e-12)
    assert hand_fractions()[0, 0] < 0.5 <= hand_fractions()[0, 3]  # corners out, edges in


def test_strongest_inside_by_default_anywhere_on_request():
    module = nets._init_(Net(), 3)
    x = np.random.RandomState(4).randn(1, 3, 16, 16).astype(np.float32)
    x[..., :3, :3] += 6.0  # a bright corner: border units win the plain ranking
    probe = zfprobe.attach(module, x)
    acts = probe.activations(x, "c3")[0]
    mask = hand_fractions() >= 0.5
    channels = list(range(12))
    inside = probe.visualize(x, "c3", channels=channels)
    anywhere = probe.visualize(x, "c3", channels=channels, positions="any")
    moved = 0
    for c, a, b in zip(channels, inside.seeds, anywhere.seeds):
        want_in = np.unravel_index(int(np.argmax(np.where(mask, acts[c], -np.inf))), (8, 8))
        want_any = np.unravel_index(int(np.argmax(acts[c])), (8, 8))
        assert a.position == tuple(map(int, want_in)) and b.position == tuple(map(int, want_any))
        assert mask[a.position]
        moved += a.position != b.position
    assert moved >= 1
    assert inside.manifest()["positions"]["rule"] == "inside"
    json.dumps(inside.manifest())  # the manifest stays JSON


# -- the rule against an independent receptive field: the gradient's support -----------------
class PoolNet(nn.Module):
    """conv5(pad 2) - maxpool 2 - conv3(pad 1) - conv3(stride 2, pad 1): RF 14 x 14, stride 4."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1, self.p1 = nn.Conv2d(3, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.a2 = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.c3 = nn.Conv2d(6, 10, 3, stride=2, padding=1)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.p1(self.a1(self.c1(x))))))


def support_fractions(module: nn.Module, hw: tuple[int, int]) -> np.ndarray:
    """Oracle: per unit of the last layer, the share of its receptive field inside the image, from
    torch autograd. The net's windows without its nonlinearities (ReLU -> identity, max -> average
    pool over the same window) make every tap of the field count; the gradient of one unit is
    non-zero exactly on the image pixels its field covers, and a field that lies wholly inside
    (the widest support) gives its full size."""
    import copy

    lin = copy.deepcopy(module)
    for name, m in list(lin.named_children()):
        if isinstance(m, nn.ReLU):
            setattr(lin, name, nn.Identity())
        elif isinstance(m, nn.MaxPool2d):
            setattr(lin, name, nn.AvgPool2d(m.kernel_size, m.stride))
    x = torch.zeros((1, 3) + hw, requires_grad=True)
    out = lin(x)
    h, w = out.shape[2:]
    rows, cols = np.zeros((h, w)), np.zeros((h, w))
    for y in range(h):
        for xx in range(w):
            (g,) = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
            support = g[0].abs().sum(0).numpy() > 0
            rows[y, xx] = support.any(axis=1).sum()
            cols[y, xx] = support.any(axis=0).sum()
    return (rows / rows.max()) * (cols / cols.max())


def _pool_probe(x):
    return zfprobe.attach(nets._init_(PoolNet(), 5), x)


def test_inside_fractions_equal_gradient_support():
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import allowed_positions, inside_fractions

    probe = _pool_probe(np.zeros((1, 3, 24, 20), np.float32))
    want = support_fractions(nets._init_(PoolNet(), 5), (24, 20))
    rf = receptive_field(probe.graph, probe.resolve("c3"), "NCHW")
    np.testing.assert_allclose(inside_fractions(rf, (6, 5)), want, atol=1e-12)
    np.testing.assert_array_equal(allowed_positions(rf, (6, 5)), want >= 0.5)
    assert 0 < (want >= 0.5).sum() < want.size  # the rule keeps some units and drops others


def _masked_topk(acts: np.ndarray, mask, k: int):
    """Oracle: each image's strongest allowed position (first in raster order), then per channel
    the k best images by (value desc, image index asc). Plain numpy."""
    flat = acts.reshape(acts.shape[0], acts.shape[1], -1)
    if mask is not None:
        flat = np.where(mask.reshape(-1), flat, -np.inf)
    val, pos = flat.max(axis=2).T, flat.argmax(axis=2).T  # [C, N]
    order = np.stack([np.lexsort((np.arange(val.shape[1]), -val[c].astype(np.float64)))[:k] for c in range(len(val))])
    return order, np.take_along_axis(val, order, 1), np.take_along_axis(pos, order, 1)


def test_mining_takes_each_images_strongest_inside_unit():
    """``mine`` ranks each image by its strongest unit among those the gradient-support oracle
    puts >= 50% inside; ``position="any"`` is the plain strongest (border units included)."""
    from zfprobe.io.datasets import ArrayDataset
    from zfprobe.studies.mining.compute import mine

    rng = np.random.RandomState(7)
    x = rng.randn(14, 3, 24, 20).astype(np.float32)
    x[::2, :, :4, :4] += 5.0   # bright corners: the padding's edge lifts border units
    probe = _pool_probe(x[:1])
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=x)
    acts = probe.activations(x, "c3")
    mask = support_fractions(nets._init_(PoolNet(), 5), (24, 20)) >= 0.5
    moved = 0
    for position, m in (("inside", mask), ("any", None)):
        top = mine(probe, ds, ["c3"], k=4, batch_size=5, position=position).layers["c3"]
        img, val, pos = _masked_topk(acts, m, 4)
        np.testing.assert_array_equal(top.images, img, err_msg=position)
        np.testing.assert_allclose(top.values, val, rtol=1e-5, atol=1e-6, err_msg=position)
        np.testing.assert_array_equal(top._positions, pos, err_msg=position)
        if m is not None:
            assert mask.reshape(-1)[top._positions].all()
            inside_pos = top._positions
        else:
            moved = int(np.sum(inside_pos != top._positions))
    assert moved >= 1  # the rule changed some of the choices on these images


def test_display_treatments_leave_the_arrays_exact(tmp_path):
    """De-aliasing, bilinear enlargement and the masked patch change the pictures only: the
    projections (probe.project, Visualization.projections, mining's project_units crops) are the
    same arrays whatever the display options, and the drawn tile is the signed grey mapping of
    the projection low-passed by a Gaussian of sigma 1 px (scipy, computed here)."""
    from scipy.ndimage import gaussian_filter

    from zfprobe.io.datasets import ArrayDataset
    from zfprobe.io.pictures import DEFAULT_PERCENTILE, signed_to_uint8
    from zfprobe.studies.mining.compute import mine, project_units
    from zfprobe.studies.mining.render import projection_tiles

    rng = np.random.RandomState(3)
    x = rng.randn(4, 3, 24, 20).astype(np.float32)
    probe = _pool_probe(x[:1])
    a = probe.visualize(x[:1], "c3", top=4, dealias_px=2.0)
    b = probe.visualize(x[:1], "c3", top=4, dealias_px=0.0)
    np.testing.assert_array_equal(a.projections, b.projections)
    assert any(not np.array_equal(s, t) for s, t in zip(a.tiles(), b.tiles()))  # the display did change
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=x)
    units = mine(probe, ds, ["c3"], k=2).layers["c3"].units([0, 1, 2])
    exact = {(u.unit.channel, u.unit.rank): u.projection_crop for u in project_units(probe, ds, "c3", units, "guided")}
    for sigma_px, blur in ((0.0, lambda p: p), (2.0, lambda p: gaussian_filter(p.astype(np.float64), (1, 1, 0), mode="constant"))):
        for unit, tile, _ in projection_tiles(probe, ds, "c3", units, "guided", "identity", DEFAULT_PERCENTILE,
                                              dealias_px=sigma_px):
            want = signed_to_uint8(blur(exact[(unit.channel, unit.rank)]), DEFAULT_PERCENTILE)
            np.testing.assert_array_equal(tile, want)
    again = {(u.unit.channel, u.unit.rank): u.projection_crop for u in project_units(probe, ds, "c3", units, "guided")}
    for key in exact:
        np.testing.assert_array_equal(again[key], exact[key])


def test_fields_larger_than_the_image_are_shown_image_sized():
    """On a 10 x 12 input PoolNet's field (14 px) is larger than the image: the exact crops stay
    14 x 14, the drawn tiles and patches are their central 10 x 10 (the shorter side, about the unit), the tile
    computed from that part (signed grey mapping of the Gaussian-smoothed crop, scipy)."""
    from scipy.ndimage import gaussian_filter

    from zfprobe.io.datasets import ArrayDataset
    from zfprobe.io.pictures import DEFAULT_PERCENTILE, signed_to_uint8
    from zfprobe.studies.mining.compute import mine, project_units
    from zfprobe.studies.mining.render import projection_tiles

    x = np.random.RandomState(9).randn(3, 3, 10, 12).astype(np.float32)
    probe = _pool_probe(x[:1])
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=x)
    units = mine(probe, ds, ["c3"], k=2, position="any").layers["c3"].units([0, 1])
    exact = {(u.unit.channel, u.unit.rank): u for u in project_units(probe, ds, "c3", units, "guided")}
    for unit, tile, patch in projection_tiles(probe, ds, "c3", units, "guided", "identity", DEFAULT_PERCENTILE):
        up = exact[(unit.channel, unit.rank)]
        assert up.projection_crop.shape[:2] == (14, 14) and tile.shape[:2] == (10, 10)
        centre = up.projection_crop[2:12, 2:12].astype(np.float64)
        np.testing.assert_array_equal(tile, signed_to_uint8(gaussian_filter(centre, (1, 1, 0), mode="constant"),
                                                            DEFAULT_PERCENTILE))
        np.testing.assert_array_equal(patch, up.patch[2:12, 2:12])
