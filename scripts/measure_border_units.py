"""The share of default units (visualize's 9 strongest channels, each at its strongest unit) whose
receptive field is >= 50% inside the image, with ``--position any`` (before) and the default
``--position inside`` (after), on EfficientNet-Lite0 (real weights) over foolbox's 20 ImageNet
photos at the three default layers. Two readings of "inside": the share of the field capped at the
image's size about its centre (zfprobe's rule), and the share of the plain nominal field.
Run: ZFPROBE_ASSET_CACHE=... python scripts/measure_border_units.py"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def plain_fraction(rf, pos) -> float:
    (y0, y1), (x0, x1) = rf.nominal_box(pos)
    h, w = rf.image_size
    iy = max(0, min(y1, h - 1) - max(y0, 0) + 1)
    ix = max(0, min(x1, w - 1) - max(x0, 0) + 1)
    return iy * ix / ((y1 - y0 + 1) * (x1 - x0 + 1))


def main() -> None:
    import zfprobe
    from efficientnet_lite0 import imagenet_photos, onnx_path
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import SeedRequest, allowed_positions, inside_fractions
    from zfprobe.studies.defaults import spread_layers

    probe = zfprobe.load(str(onnx_path()))
    photos = imagenet_photos()
    x = np.concatenate([probe.load_input(str(p))[1] for p, _ in photos])
    print("| layer | map | RF | units | >= 50% inside (capped RF), any -> inside | >= 50% inside (plain RF), any -> inside |")
    print("|---|---|---|---|---|---|")
    for layer in spread_layers(probe, 3):
        acts = probe.activations(x, layer)
        rf = receptive_field(probe.graph, probe.resolve(layer), "NCHW")
        frac = inside_fractions(rf, acts.shape[2:])
        allowed = allowed_positions(rf, acts.shape[2:], "inside")
        counts = {}
        for rule, mask in (("any", None), ("inside", allowed)):
            clipped = plain = n = 0
            for i in range(len(photos)):
                for s in SeedRequest(top=9, allowed=mask).resolve(acts, i):
                    n += 1
                    clipped += frac[s.position] >= 0.5
                    plain += plain_fraction(rf, s.position) >= 0.5
            counts[rule] = (clipped, plain, n)
        (ca, pa, n), (ci, pi, _) = counts["any"], counts["inside"]
        print(f"| {layer} | {acts.shape[2]}x{acts.shape[3]} | {rf.size[0]} | {n} | {ca / n:.0%} -> {ci / n:.0%} "
              f"| {pa / n:.0%} -> {pi / n:.0%} |")


if __name__ == "__main__":
    main()
