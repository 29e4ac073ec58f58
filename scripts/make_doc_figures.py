"""Regenerate the pictures in docs/ and the README from the bundled default model.

Run: python scripts/make_doc_figures.py   (writes docs/img/*.png)
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

import zfprobe
from zfprobe.io.pictures import contact_sheet, projection_to_hwc, signed_to_uint8

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "zfprobe", "data")
IMG = os.path.join(ROOT, "docs", "img")


def main() -> None:
    os.makedirs(IMG, exist_ok=True)
    probe = zfprobe.load(os.path.join(DATA, "mnist_cnn.onnx"))
    digit = os.path.join(DATA, "digit.png")

    # README: the main job's contact sheet.
    result = probe.visualize(digit, "conv2", top=8)
    sheet = contact_sheet([result.image] + result.tiles(),
                          ["input"] + [f"c{s.channel} @{s.position}" for s in result.seeds],
                          columns=9, tile_size=96, title="zfprobe visualize mnist_cnn.onnx --layer conv2 --top 8")
    Image.fromarray(sheet).save(os.path.join(IMG, "demo_contact_sheet.png"))

    # methods.md: the three rules side by side, same units.
    tiles, captions = [], []
    channels = [s.channel for s in result.seeds[:4]]
    for rule in ("deconvnet", "gradient", "guided"):
        r = probe.visualize(digit, "conv3", channels=channels, rule=rule)
        tiles += r.tiles()
        captions += [f"{rule} c{s.channel}" for s in r.seeds]
    Image.fromarray(contact_sheet(tiles, captions, columns=4, tile_size=96,
                                  title="conv3, same units: deconvnet / gradient / guided")).save(os.path.join(IMG, "rules.png"))

    # methods.md: single unit vs whole feature map.
    unit = probe.visualize(digit, "conv3", channels=channels[:3], mode="unit")
    fmap = probe.visualize(digit, "conv3", channels=channels[:3], mode="map")
    Image.fromarray(contact_sheet(unit.tiles() + fmap.tiles(),
                                  [f"unit c{c}" for c in channels[:3]] + [f"map c{c}" for c in channels[:3]],
                                  columns=3, tile_size=96, title="seeds: strongest unit vs whole feature map")).save(
        os.path.join(IMG, "seeds.png"))


if __name__ == "__main__":
    main()
