"""The picture of docs/guarantees.md: a 16-bit and a float photo, as zfprobe read them before
issue 10 (Pillow's convert: clipped to 0/255, or black) and as it reads them now, with the
deconvnet projections of the same units of EfficientNet-Lite0 (real ImageNet weights).

Run: python scripts/make_guarantee_figures.py [EFFICIENTNET_ONNX]   (writes docs/img/faithful_images.png)
EFFICIENTNET_ONNX defaults to the ONNX export the tests cache under $ZFPROBE_ASSET_CACHE.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
from PIL import Image

import zfprobe
from zfprobe.io.pictures import contact_sheet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG = os.path.join(ROOT, "docs", "img")
LAYER = "/_blocks.5/pad__depthwise_conv/Pad"


def _old_read(path: str, prep) -> np.ndarray:
    """What zfprobe did before: Pillow's convert('RGB') (clips 16-bit, truncates float)."""
    from zfprobe.io.images import fit_image

    with Image.open(path) as im:
        return np.asarray(fit_image(im.convert("RGB"), prep.size, prep.resize), np.uint8)


def main() -> None:
    from skimage import data

    default = os.path.join(os.environ.get("ZFPROBE_ASSET_CACHE", ""), "efficientnet_lite0_zfprobe_v1.onnx")
    model = sys.argv[1] if len(sys.argv) > 1 else default
    probe = zfprobe.load(model)
    prep = probe.preprocessing
    grey = np.asarray(Image.fromarray(data.astronaut()).convert("L"), np.float64)
    tmp = tempfile.mkdtemp()
    files = {"16-bit PNG": os.path.join(tmp, "a16.png"), "float TIFF": os.path.join(tmp, "af.tif")}
    Image.fromarray((grey * 257).astype(np.uint16)).save(files["16-bit PNG"])
    Image.fromarray((grey / 255).astype(np.float32)).save(files["float TIFF"])
    tiles, captions = [], []
    channels = [s.channel for s in probe.visualize(files["16-bit PNG"], LAYER, top=4, mode="map", percentile=99).seeds]
    for label, path in files.items():
        old = _old_read(path, prep)
        for when, result in (("before", probe.visualize(prep.to_tensor(old), LAYER, channels=channels, mode="map", percentile=99)),
                             ("now", probe.visualize(path, LAYER, channels=channels, mode="map", percentile=99))):
            shown = old if when == "before" else result.image
            tiles += [shown] + result.tiles()
            captions += [f"{label}, {when}"] + [f"c{s.channel} {s.value:.2g}" for s in result.seeds]
    sheet = contact_sheet(tiles, captions, columns=5, tile_size=160,
                          title=f"EfficientNet-Lite0 {LAYER}, deconvnet of 4 feature maps: 16-bit / float photo, read before and now")
    os.makedirs(IMG, exist_ok=True)
    Image.fromarray(sheet).save(os.path.join(IMG, "faithful_images.png"))


if __name__ == "__main__":
    main()
