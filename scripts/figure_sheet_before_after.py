"""docs/img/sheet_before_after.png: the visualize contact sheet of EfficientNet-Lite0 (real weights)
at an early layer, with the former defaults (deconvnet, strongest unit anywhere, no de-aliasing,
small crops enlarged by nearest neighbour, image | projection) above the current ones (rule auto =
guided here, >= 50% of the RF inside, 2 px de-aliasing, bilinear, image | projection | masked patch).
Run: ZFPROBE_ASSET_CACHE=... python scripts/figure_sheet_before_after.py"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def main(layer: str = "/_blocks.2/Add") -> None:
    import zfprobe
    from PIL import Image
    from efficientnet_lite0 import imagenet_photos, onnx_path
    from zfprobe.io.pictures import contact_sheet

    probe = zfprobe.load(str(onnx_path()))
    photo = str(imagenet_photos()[0][0])
    old = probe.visualize(photo, layer, top=3, rule="deconvnet", positions="any", dealias_px=0)
    pictures, captions = [], []
    for s, v, t in zip(old.seeds, old.image_tiles(), old.tiles()):
        pictures += [v, t]
        captions += [f"c{s.channel} image", f"c{s.channel} deconvnet"]
    top = contact_sheet(pictures, captions, columns=9, tile_size=160, title=f"before: {layer} - deconvnet - nearest")
    new = probe.visualize(photo, layer, top=3).sheet()
    width = max(top.shape[1], new.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=255)  # noqa: E731
    Image.fromarray(np.concatenate([pad(top), pad(new)])).save("docs/img/sheet_before_after.png")


if __name__ == "__main__":
    main(*sys.argv[1:])
