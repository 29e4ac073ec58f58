"""docs/img/rule_default_effnet.png: one unit of EfficientNet-Lite0 (real weights) projected on four
photos under the deconvnet and guided backprop (docs/methods.md, "Which rule by default").

The same unit (channel and position fixed, seed value 1) on every photo: without max-pool switches
the deconvnet gives (nearly) the same picture each time, guided backprop follows the photo.
Prints the mean pairwise correlation of the projections across photos per rule.
Run: ZFPROBE_ASSET_CACHE=... python scripts/figure_rule_default.py [layer]"""
from __future__ import annotations

import sys
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def one_unit(probe, layer, photos, channel=None, position=None):
    """(channel, position, images [N, ...], displays, projections {rule: [N, ...]})."""
    loaded = [probe.load_input(str(p)) for p, _ in photos]
    x = np.concatenate([t for _, t, _ in loaded])
    acts = probe.activations(x[:1], layer)
    if channel is None:
        flat = int(np.argmax(acts[0].max(axis=(1, 2))))
        channel = flat
        plane = acts[0, channel]
        position = tuple(int(i) for i in np.unravel_index(int(np.argmax(plane)), plane.shape))
    seeds = np.zeros((len(photos),) + acts.shape[1:], np.float32)
    seeds[(slice(None), channel) + position] = 1.0
    out = {rule: probe.project(x, layer, seeds, np.arange(len(photos)), rule=rule) for rule in ("deconvnet", "guided")}
    return channel, position, x, [d for d, _, _ in loaded], out


def mean_correlation(projections: np.ndarray) -> float:
    flat = projections.reshape(len(projections), -1)
    return float(np.mean([np.corrcoef(flat[i], flat[j])[0, 1] for i, j in combinations(range(len(flat)), 2)]))


def main(layer: str = "/_blocks.10/Add", out: str = "docs/img/rule_default_effnet.png") -> None:
    import zfprobe
    from efficientnet_lite0 import imagenet_photos, onnx_path
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.io.pictures import contact_sheet, projection_to_hwc, signed_to_uint8, DEFAULT_PERCENTILE
    from zfprobe.studies.mining.compute import crop
    from zfprobe.studies.visualize.compute import crop_box
    from PIL import Image

    probe = zfprobe.load(str(onnx_path()))
    photos = imagenet_photos()[:4]
    c, pos, _, displays, proj = one_unit(probe, layer, photos)
    box = crop_box(receptive_field(probe.graph, probe.resolve(layer), "NCHW").nominal_box(pos), (224, 224))
    tiles, captions = [], []
    for rule in ("image", "deconvnet", "guided"):
        for i, (path, _) in enumerate(photos):
            if rule == "image":
                tiles.append(crop(displays[i], box, 128).astype(np.uint8))
            else:
                tiles.append(signed_to_uint8(crop(projection_to_hwc(proj[rule][i]), box, 0.0), DEFAULT_PERCENTILE))
            captions.append(f"{rule} {path.stem[-7:]}")
    sheet = contact_sheet(tiles, captions, columns=4, tile_size=160,
                          title=f"EfficientNet-Lite0 {layer} unit c{c} @{pos[0]},{pos[1]}: same unit, four photos")
    Image.fromarray(sheet).save(out)
    for rule in ("deconvnet", "guided"):
        print(f"{rule}: mean pairwise correlation across photos {mean_correlation(proj[rule]):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
