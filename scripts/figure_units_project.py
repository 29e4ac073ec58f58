"""docs/img/units_ceiling_effnet.png and docs/img/units_border_effnet.png (docs/methods.md, "Units
that project"), EfficientNet-Lite0 with real weights, a foolbox ImageNet photo, default options.

1. A ReLU6 layer (``/_blocks.15/relu__bn1/Clip``): its 6 strongest channels' strongest units sit at
   6.0. Seeded past the layer's own ceiling (the default) they project; with the plain definition
   (the ceiling's own derivative, ``seed_past_ceiling=False``) every projection is exactly zero.
2. ``/_blocks.14/Add`` (7x7): the strongest units anywhere (``--position any``) vs among units with
   >= 50% of their receptive field inside the image (the default), whole frame with the RF box.
Run: ZFPROBE_ASSET_CACHE=... python scripts/figure_units_project.py"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def plain_projection(probe, x, layer, seeds, rule):
    """The projection with the ceiling masking its own seed (the former definition)."""
    from zfprobe.engine.deconv import PROJECTION, SEED, SEED_IMAGE, DeconvOptions, build_deconvnet

    program = build_deconvnet(probe.graph, probe.resolve(layer), DeconvOptions(rule, seed_past_ceiling=False))
    program, weights = probe.with_parameters(program, None)
    feeds = {probe.input_name: x, SEED: seeds, SEED_IMAGE: np.zeros(len(seeds), np.int64), **weights}
    return probe.backend.run(program, feeds, [PROJECTION])[0]


def main(which: str = "both") -> None:
    import zfprobe
    from PIL import Image
    from efficientnet_lite0 import imagenet_photos, onnx_path
    from zfprobe.engine.seeds import seed_tensor
    from zfprobe.io.pictures import contact_sheet, signed_to_uint8, DEFAULT_PERCENTILE, with_legend

    probe = zfprobe.load(str(onnx_path()))
    path = str(imagenet_photos()[0][0])
    layer = "/_blocks.15/relu__bn1/Clip"
    if which == "border":
        return border(probe, str(imagenet_photos()[2][0]))
    vis = probe.visualize(path, layer, top=6, frame="full")
    values = [s.value for s in vis.seeds]
    _, x, _ = probe.load_input(path)
    seeds, _ = seed_tensor(probe.activations(x, layer), vis.seeds)
    plain = plain_projection(probe, x, layer, seeds, vis.rule)
    tiles = [signed_to_uint8(p.transpose(1, 2, 0), DEFAULT_PERCENTILE) for p in plain] + vis.tiles()
    captions = [f"before c{s.channel} {s.value:.3g}" for s in vis.seeds] + [f"after c{s.channel} {s.value:.3g}" for s in vis.seeds]
    sheet = contact_sheet(tiles, captions, columns=6, tile_size=160,
                          title=f"{layer} ({vis.rule}): units at 6.0, ceiling masks the seed (top) vs seeded past it (bottom)")
    Image.fromarray(with_legend(sheet, DEFAULT_PERCENTILE)).save("docs/img/units_ceiling_effnet.png")
    print(f"{layer}: seed values {values}; before: {sum(not np.any(p) for p in plain)}/{len(plain)} exactly zero; "
          f"after: {sum(not np.any(p) for p in vis.projections)}/{len(plain)}")
    border(probe, str(imagenet_photos()[2][0]))


def border(probe, path: str) -> None:
    from PIL import Image
    from zfprobe.io.pictures import contact_sheet, DEFAULT_PERCENTILE, with_legend

    layer = "/_blocks.14/Add"
    rows = []
    for positions in ("any", "inside"):
        v = probe.visualize(path, layer, top=6, frame="full", positions=positions)
        rows.append(v)
        print(positions, [(s.channel, s.position) for s in v.seeds])
    tiles = [t for v in rows for t in v.tiles()]
    captions = [f"{v.positions} c{s.channel} @{s.position[0]},{s.position[1]}" for v in rows for s in v.seeds]
    sheet = contact_sheet(tiles, captions, columns=6, tile_size=160,
                          title=f"{layer} ({rows[0].rule}): strongest units anywhere (top) vs >= 50% of the RF inside (bottom)")
    Image.fromarray(with_legend(sheet, DEFAULT_PERCENTILE)).save("docs/img/units_border_effnet.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
