"""The picture of docs/fusion.md: a real third-party net whose hard-swish layers were exported as
decomposed chains (PaddlePaddle's PP-OCR text-direction classifier, shipped in
rapidocr-onnxruntime), probed through the fused HardSwish nodes on a real scanned text line.

Run: python scripts/make_fusion_figure.py   (writes docs/img/fusion_ppocr.png; needs the
rapidocr-onnxruntime wheel, fetched into the asset cache by tests/assets.py)
"""
from __future__ import annotations

import collections
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import zfprobe  # noqa: E402
from zfprobe.io.pictures import projection_to_hwc, signed_to_uint8  # noqa: E402


def text_line() -> np.ndarray:
    """A line of real scanned text (scikit-image's ``page``), 48 x 192 RGB uint8."""
    from skimage import data

    page = data.page()                      # 191 x 384 grey scan
    line = page[8:44, 20:164]                # one printed line, cropped with its margins
    img = Image.fromarray(line).convert("RGB").resize((192, 48), Image.BILINEAR)
    return np.asarray(img)


def main() -> None:
    from assets import asset_path

    model = asset_path("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
    probe = zfprobe.load(str(model), (1, 3, 48, 192))
    fused = collections.Counter(probe.graph.metadata.get("fused", {}).values())
    rgb = text_line()
    x = ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]
    swish = [n.outputs[0] for n in probe.graph.nodes if n.op_type == "HardSwish"]
    layer = swish[len(swish) * 2 // 3]      # a deep layer, after 2/3 of the fused hard-swish nodes
    acts = probe.activations(x, layer)[0]
    strength = acts.reshape(acts.shape[0], -1).max(1)
    channels = [int(c) for c in np.argsort(-strength)[:3]]
    seeds = np.zeros((len(channels),) + acts.shape, np.float32)
    for k, c in enumerate(channels):
        pos = np.unravel_index(int(np.argmax(acts[c])), acts.shape[1:])
        seeds[(k, c) + pos] = acts[(c,) + pos]

    scale, pad, cap = 2, 6, 16
    tile_w, tile_h = 192 * scale, 48 * scale
    rows = [("input: a scanned text line (scikit-image 'page')", [rgb])]
    for rule in ("deconvnet", "gradient", "guided"):
        proj = probe.project(x, layer, seeds, rule=rule)
        rows.append((f"{rule}: strongest units of channels {channels}",
                     [signed_to_uint8(projection_to_hwc(p), percentile=99.5) for p in proj]))
    cols = 3
    title = (f"PP-OCR v2 direction classifier (rapidocr-onnxruntime), layer {layer}: "
             f"{fused['HardSwish']} PaddlePaddle hard-swish chains fused into HardSwish")
    width = pad + cols * (tile_w + pad)
    height = 24 + len(rows) * (cap + tile_h + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 5), title, fill="black")
    y = 24
    for caption, tiles in rows:
        draw.text((pad, y), caption, fill="black")
        y += cap
        for i, t in enumerate(tiles):
            sheet.paste(Image.fromarray(t).resize((tile_w, tile_h), Image.NEAREST), (pad + i * (tile_w + pad), y))
        y += tile_h + pad
    out = os.path.join(ROOT, "docs", "img", "fusion_ppocr.png")
    sheet.save(out)
    print(out, layer, channels, dict(fused))


if __name__ == "__main__":
    main()
