"""Display defaults on real nets (docs/legibility.md, "Display treatments"): EfficientNet-Lite0
(real ImageNet weights, foolbox photos) and the PP-OCRv4 text detector (scikit-image's text.png),
an early, a middle and the deepest default layer, zfprobe's default units (the strongest channels,
>= 50% of the RF inside), deconvnet and guided backprop.

Per layer and rule it prints: the tiles, how many are exactly zero, the low-pass energy share of
the raw projections, and the legibility measure (zfprobe.io.display.structure_fraction: share of
the displayed tile that differs from grey by >= 16 levels after a low-pass at the layer's stride)
before (plain display) and after de-aliasing at the stride. It writes one figure per net and
layer: image crop | deconvnet | guided | guided de-aliased | masked patch.
Run: ZFPROBE_ASSET_CACHE=... python scripts/legibility_display.py [effnet|ppocr] [N_IMAGES] [TOP]"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
RULES = ("deconvnet", "guided")


def nets(which: str, n_images: int):
    import zfprobe

    if which == "effnet":
        from efficientnet_lite0 import imagenet_photos, onnx_path

        probe = zfprobe.load(str(onnx_path()))
        layers = ["/_blocks.2/Add", "/_blocks.10/Add", "/_blocks.14/Add"]
        return probe, layers, [str(p) for p, _ in imagenet_photos()[:n_images]], None
    from PIL import Image
    from skimage import data

    from assets import rapidocr_det_onnx

    path = Path(tempfile.gettempdir()) / "zfprobe_text.png"
    Image.fromarray(np.repeat(data.text()[..., None], 3, axis=2)).save(path)
    probe = zfprobe.load(str(rapidocr_det_onnx()), input_shape=(160, 448))
    from zfprobe.studies.defaults import spread_layers

    layers = spread_layers(probe, 3)
    prep = probe.preprocessing.with_preset("imagenet")
    return probe, layers, [str(path)], prep


def measure(which: str = "effnet", n_images: int = 2, top: int = 6) -> None:
    from PIL import Image

    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.io.display import dealias, lowpass_energy, masked_patch, structure_fraction
    from zfprobe.io.pictures import DEFAULT_PERCENTILE, contact_sheet, signed_to_uint8
    from zfprobe.studies.mining.compute import crop
    from zfprobe.studies.visualize.compute import crop_box

    probe, layers, images, prep = nets(which, n_images)
    print(f"| net | layer | stride | rule | tiles | exactly zero | low-pass energy (median) | legibility before (median / min) | after de-aliasing (median / min) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for depth, layer in zip(("early", "middle", "deepest"), layers):
        rf = receptive_field(probe.graph, probe.resolve(layer), "NCHW")
        stride = rf.stride
        fig_rows = {}
        for rule in RULES:
            energy, before, after, zero, n = [], [], [], 0, 0
            for i, image in enumerate(images):
                vis = probe.visualize(image, layer, top=top, rule=rule, preprocessing=prep)
                for k, (s, p) in enumerate(zip(vis.seeds, vis.projections)):
                    n += 1
                    if not np.any(p):
                        zero += 1
                        continue
                    hwc = vis._hwc(p)
                    box = crop_box(vis.boxes[k], hwc.shape[:2])
                    raw = crop(hwc, box, 0.0)
                    t_before = signed_to_uint8(raw, DEFAULT_PERCENTILE)
                    t_after = signed_to_uint8(crop(dealias(hwc, stride), box, 0.0), DEFAULT_PERCENTILE)
                    energy.append(lowpass_energy(raw, stride))
                    before.append(structure_fraction(t_before, stride))
                    after.append(structure_fraction(t_after, stride))
                    if i == 0:
                        patch = crop(vis.image, box, 128).astype(np.uint8)
                        fig_rows.setdefault("image", []).append((patch, f"c{s.channel} @{s.position[0]},{s.position[1]}"))
                        fig_rows.setdefault(rule, []).append((t_before, f"{rule} {before[-1]:.2f}"))
                        if rule == "guided":
                            fig_rows.setdefault("guided de-aliased", []).append((t_after, f"de-aliased {after[-1]:.2f}"))
                            fig_rows.setdefault("masked", []).append((masked_patch(patch, raw, stride), "masked patch"))
            med = lambda v: float(np.median(v)) if v else float("nan")  # noqa: E731
            print(f"| {which} | {depth} {layer} | {stride[0]} | {rule} | {n} | {zero} | {med(energy):.2f} | "
                  f"{med(before):.2f} / {min(before, default=float('nan')):.2f} | {med(after):.2f} / {min(after, default=float('nan')):.2f} |")
        tiles, captions = [], []
        for key in ("image", "deconvnet", "guided", "guided de-aliased", "masked"):
            row = fig_rows.get(key, [])[:top]
            tiles += [t for t, _ in row]
            captions += [c for _, c in row]
        sheet = contact_sheet(tiles, captions, columns=top, tile_size=160,
                              title=f"{which} {layer} (stride {stride[0]}): image | deconvnet | guided | guided de-aliased | masked patch")
        out = f"docs/img/display_{which}_{depth}.png"
        Image.fromarray(sheet).save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    measure(args[0] if args else "effnet", int(args[1]) if len(args) > 1 else 2, int(args[2]) if len(args) > 2 else 6)
