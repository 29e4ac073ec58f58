"""The legibility measure (issue 11) on EfficientNet-Lite0 with its real ImageNet weights and real
photos: in every tile whose projection is non-zero, at least 2 % of the receptive-field pixels
differ from mid-grey by 16 or more levels. Layers at about 1/3, 2/3 and the end of the network
(the default layer choice), for the visualize contact sheets and the Fig. 2 mining sheets.

The measure is computed here from the uint8 tiles zfprobe draws and from the raw projection
(non-zero or not), independently of how zfprobe scales them. The same tiles under the old
max-|p| scaling are measured too, to show what the default fixes.
"""
from __future__ import annotations

import numpy as np
import pytest

from efficientnet_lite0 import imagenet_photos, onnx_path

MIN_FRACTION, MIN_LEVELS = 0.02, 16


def legible_fraction(tile: np.ndarray) -> float:
    """Share of the tile's pixels whose grey value differs from 128 by >= 16 in any channel."""
    diff = np.abs(tile.astype(np.int16) - 128).max(axis=-1)
    return float(np.mean(diff >= MIN_LEVELS))


@pytest.fixture(scope="module")
def effnet():
    import zfprobe
    from zfprobe.studies.defaults import spread_layers

    try:
        path = onnx_path()
        photos = imagenet_photos()
    except Exception as exc:  # no registry: the assets cannot be fetched
        pytest.skip(f"EfficientNet-Lite0 weights or photos unavailable: {exc}")
    probe = zfprobe.load(str(path))
    layers = spread_layers(probe, 3)
    return probe, layers, photos


def test_default_layers_spread_over_depth(effnet):
    probe, layers, _ = effnet
    assert layers == ["/_blocks.6/Add", "/_blocks.10/Add", "/_blocks.14/Add"]  # 14x14, 14x14, 7x7


def test_contact_sheets_are_legible(effnet):
    from zfprobe.io.pictures import signed_to_uint8

    probe, layers, photos = effnet
    worst, old_fail, n = 1.0, 0, 0
    for layer in layers:
        for path, _ in photos[:1]:
            # the deepest layer's deconvnet spans the whole net (about 6 GB for 9 seeds): 3 seeds there
            vis = probe.visualize(str(path), layer, top=3 if layer == layers[-1] else 9)
            for tile, raw in zip(vis.tiles(), vis.projections):
                if not np.any(raw):
                    continue
                n += 1
                frac = legible_fraction(tile)
                worst = min(worst, frac)
                assert frac >= MIN_FRACTION, (layer, path.name, frac)
                old = signed_to_uint8(vis._hwc(raw), None)  # the former default: max |p|
                old_fail += legible_fraction(old) < MIN_FRACTION
    print(f"contact sheets: {n} tiles, worst legible fraction {worst:.3f}; max-|p| scaling fails {old_fail}/{n}")
    assert n >= 18


@pytest.mark.slow
def test_mining_sheets_are_legible(effnet, monkeypatch):
    from zfprobe.io.datasets import open_dataset
    from zfprobe.studies.mining.compute import mine, project_units
    from zfprobe.studies.mining.render import render_layer
    from zfprobe.io.pictures import signed_to_uint8

    # this shared test machine has ~8 GB free: smaller reverse batches (same results)
    monkeypatch.setenv("ZFPROBE_MEMORY", "512M")
    probe, layers, photos = effnet
    folder = photos[0][0].parent
    dataset = open_dataset(str(folder), probe.preprocessing, probe.input_shape)
    result = mine(probe, dataset, layers, k=9)
    worst, n, old_fail = 1.0, 0, 0
    for layer in layers:
        chans = list(range(4 if layer == layers[-1] else 8))
        raw_crops = {(up.unit.channel, up.unit.rank): up.projection_crop
                     for up in project_units(probe, dataset, layer, result.layers[layer].units(chans), image_chunk=4)}
        pics = render_layer(probe, result, layer, channels=chans, image_chunk=4)
        for c, tiles in pics.tiles.items():
            for unit, tile, _ in tiles:
                if not np.any(raw_crops[(c, unit.rank)]):
                    continue
                n += 1
                frac = legible_fraction(tile)
                worst = min(worst, frac)
                assert frac >= MIN_FRACTION, (layer, c, unit.rank, frac)
                old_fail += legible_fraction(signed_to_uint8(raw_crops[(c, unit.rank)], None)) < MIN_FRACTION
    print(f"mining sheets: {n} tiles, worst legible fraction {worst:.3f}; max-|p| scaling fails {old_fail}/{n}")
    assert n >= (8 + 8 + 4) * 9 * 0.9
