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
    from zfprobe.io.display import dealias, edge_alignment, masked_patch
    from zfprobe.io.pictures import DEFAULT_PERCENTILE, contact_sheet, signed_to_uint8
    from zfprobe.studies.mining.compute import crop
    from zfprobe.studies.visualize.compute import crop_box

    probe, layers, images, prep = nets(which, n_images)
    print("| net | layer | stride | rule | tiles | exactly zero | edge alignment: plain | de-aliased at 2 px | at the layer's stride | visible (>= 16 levels) plain | units alike (corr.) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for depth, layer in zip(("early", "middle", "deepest"), layers):
        rf = receptive_field(probe.graph, probe.resolve(layer), "NCHW")
        stride = rf.stride
        fig_rows = {}
        for rule in RULES:
            plain, fine, coarse, visible, alike, zero, n = [], [], [], [], [], 0, 0
            for i, image in enumerate(images):
                vis = probe.visualize(image, layer, top=top, rule=rule, preprocessing=prep)
                flat = vis.projections.reshape(len(vis.projections), -1)
                alike += [np.corrcoef(flat[a], flat[b])[0, 1] for a in range(len(flat)) for b in range(a + 1, len(flat))
                          if flat[a].std() and flat[b].std()]
                for k, (s, p) in enumerate(zip(vis.seeds, vis.projections)):
                    n += 1
                    if not np.any(p):
                        zero += 1
                        continue
                    hwc = vis._hwc(p)
                    box = crop_box(vis.boxes[k], hwc.shape[:2]) if vis.boxes[k] else ((0, hwc.shape[0] - 1), (0, hwc.shape[1] - 1))
                    raw = crop(hwc, box, 0.0)
                    patch = crop(vis.image, box, 128).astype(np.uint8)
                    t_before = signed_to_uint8(raw, DEFAULT_PERCENTILE)
                    d_fine = crop(dealias(hwc, 2), box, 0.0)
                    d_coarse = crop(dealias(hwc, stride), box, 0.0)
                    plain.append(edge_alignment(raw, patch))
                    fine.append(edge_alignment(d_fine, patch))
                    coarse.append(edge_alignment(d_coarse, patch))
                    visible.append(float(np.mean(np.abs(t_before.astype(int) - 128).max(axis=-1) >= 16)))
                    if i == 0 and rule == RULES[0]:
                        where = f"@{s.position[0]},{s.position[1]}" if s.position else ""
                        fig_rows.setdefault("image", []).append((patch, f"c{s.channel} {where}"))
                    if i == 0:
                        fig_rows.setdefault(rule, []).append((t_before, f"{rule} {plain[-1]:.2f}"))
                        if rule == "guided":
                            fig_rows.setdefault("fine", []).append((signed_to_uint8(d_fine, DEFAULT_PERCENTILE), f"guided, 2 px {fine[-1]:.2f}"))
                            fig_rows.setdefault("coarse", []).append((signed_to_uint8(d_coarse, DEFAULT_PERCENTILE), f"guided, {stride[0]} px {coarse[-1]:.2f}"))
                            fig_rows.setdefault("masked", []).append((masked_patch(patch, d_fine, 1), "masked patch"))
            med = lambda v: f"{float(np.median(v)):.2f}" if v else "-"  # noqa: E731
            print(f"| {which} | {depth} {layer} | {stride[0]} | {rule} | {n} | {zero} | {med(plain)} | {med(fine)} | "
                  f"{med(coarse)} | {med(visible)} | {med(alike)} |", flush=True)
        tiles, captions = [], []
        for key in ("image", "deconvnet", "guided", "fine", "coarse", "masked"):
            row = fig_rows.get(key, [])[:top]
            tiles += [t for t, _ in row]
            captions += [c for _, c in row]
        per_row = len(fig_rows["image"][:top])
        sheet = contact_sheet(tiles, captions, columns=per_row if per_row > 1 else len(tiles), tile_size=160,
                              title=f"{which} {layer} (stride {stride[0]}): image | deconvnet | guided | de-aliased 2 px | at stride | masked")
        out = f"docs/img/display_{which}_{depth}.png"
        Image.fromarray(sheet).save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    measure(args[0] if args else "effnet", int(args[1]) if len(args) > 1 else 2, int(args[2]) if len(args) > 2 else 6)
