"""Issue 23's must-show, regenerated: EfficientNet-Lite0 (real ImageNet weights; the MobileNetV2-style
net: inverted residuals, depthwise convolutions, ReLU6) and the PP-OCRv4 text detector, at the
three default layers (zfprobe.studies.defaults.spread_layers: about 1/3, 2/3, the deepest), before
(the former defaults: deconvnet, the strongest unit anywhere, no de-aliasing) and after (the
defaults: --rule auto, --position inside, 2 px de-aliasing). Per net, layer and rule it prints:

(a) the default tiles (9 strongest channels per image) that are exactly zero, and how many of
    them come with the printed warning;
(b) image dependence: one unit (image 0's strongest channels, each at its unit) seeded with 1.0 on
    every image; the mean pairwise correlation, between images, of its projections (raw arrays,
    over the unit's receptive-field crop). 1.00: one picture whatever the image;
(c) legibility (docs/legibility.md, zfprobe.io.display.legibility: image-specific edge alignment
    x (1 - the share of the energy in the stride-periodic pattern) x (1 - the tile's mean
    correlation with the other units' projections of its image); median over the default tiles
    as displayed), and its parts: image-specific and plain edge alignment, periodic share, units
    alike;
(f) the share of default units whose receptive field is >= 50% inside the image, for visualize's
    units (9 strongest channels per image) and mining's (top 9 images per channel).

and writes docs/img/mustshow_<net>_<depth>.png: for two units, rows image crop | before | after |
masked patch, one column per image. ``--sizes`` (PP-OCRv4 only) repeats (b), (c) at other input
sizes (item 4: larger inputs for a fully convolutional net).

Run: ZFPROBE_ASSET_CACHE=/work/assets python scripts/must_show.py [effnet|ppocr] [--sizes 160x448,...]
Report screenshots: scripts/report_screenshots.py (docs/report.md gives the commands).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
N_IMAGES, TOP, FIG_UNITS, TILE = 4, 9, 2, 128
DEPTHS = ("early", "middle", "deepest")


def ppocr_images() -> list[str]:
    """Four pages and photos with text or edges (scikit-image): text, page, and two photos."""
    from PIL import Image
    from skimage import data

    out = []
    for name in ("text", "page", "coffee", "astronaut"):
        img = getattr(data, name)()
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
        path = Path(tempfile.gettempdir()) / f"zfprobe_mustshow_{name}.png"
        Image.fromarray(img).save(path)
        out.append(str(path))
    return out


def setup(which: str, size: tuple[int, int] | None = None):
    import zfprobe

    if which == "effnet":
        from efficientnet_lite0 import imagenet_photos, onnx_path

        probe = zfprobe.load(str(onnx_path()))  # its sidecar says --preset imagenet
        return probe, [str(p) for p, _ in imagenet_photos()[:N_IMAGES]], probe.preprocessing
    from assets import rapidocr_det_onnx

    probe = zfprobe.load(str(rapidocr_det_onnx()), input_shape=size or (160, 448))
    return probe, ppocr_images(), probe.preprocessing.with_preset("imagenet")


def mined_inside(acts: np.ndarray, mask, frac: np.ndarray, k: int = 9) -> float:
    """Share of mining's units (per channel the top-k images, each at its strongest allowed
    position) whose field is >= 50% inside."""
    flat = acts.reshape(acts.shape[0], acts.shape[1], -1)
    if mask is not None:
        flat = np.where(mask.reshape(-1), flat, -np.inf)
    val, pos = flat.max(axis=2).T, flat.argmax(axis=2).T  # [C, N]
    order = np.argsort(-val, axis=1, kind="stable")[:, :k]
    return float(np.mean(frac.reshape(-1)[np.take_along_axis(pos, order, 1)] >= 0.5))


def pairwise_corr(rows: list[np.ndarray]) -> float:
    vals = [np.corrcoef(a, b)[0, 1] for i, a in enumerate(rows) for b in rows[i + 1:] if a.std() and b.std()]
    return float(np.mean(vals)) if vals else float("nan")


def layer_rows(which, probe, images, prep, layer, depth, figures=True):
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import SeedRequest, allowed_positions, inside_fractions
    from zfprobe.io.display import edge_alignment, image_specificity, legibility, periodic_share, shown
    from zfprobe.io.pictures import projection_to_hwc
    from zfprobe.studies.mining.compute import crop
    from zfprobe.studies.visualize.compute import crop_box

    loaded = [probe.load_input(p, prep) for p in images]
    x = np.concatenate([t for _, t, _ in loaded])
    displays = [d for d, _, _ in loaded]
    rf = receptive_field(probe.graph, probe.resolve(layer), prep.layout)
    acts = probe.activations(x, layer)
    spatial = acts.shape[2:]
    frac = inside_fractions(rf, spatial)
    allowed = allowed_positions(rf, spatial, "inside")
    hw = displays[0].shape[:2]

    def box_of(pos):
        return crop_box(rf.nominal_box(tuple(pos)), hw) if pos is not None and not rf.is_global else ((0, hw[0] - 1), (0, hw[1] - 1))

    inside = {}
    for name, mask in (("any", None), ("inside", allowed)):
        vis_units = [s for i in range(len(images)) for s in SeedRequest(top=TOP, allowed=mask).resolve(acts, i)]
        inside[name] = (float(np.mean([frac[s.position] >= 0.5 for s in vis_units])) if frac is not None else 1.0,
                        mined_inside(acts, mask, frac) if frac is not None else 1.0)
    after_rule = probe.choose_rule(layer, "auto").rule
    configs = (("before", "deconvnet", "any", 0.0), ("after", after_rule, "inside", 2.0),
               ("after, deconvnet", "deconvnet", "inside", 2.0))  # the rule's part of the change
    units = SeedRequest(top=TOP, allowed=allowed).resolve(acts, 0)  # one unit set for (b) and the figures
    out, fig = [], {}
    for label, rule, position, dealias_px in configs:
        zero = warned = tiles = 0
        ea, spec, per, leg, same = [], [], [], [], []
        for i, path in enumerate(images):
            vis = probe.visualize(path, layer, top=TOP, rule=rule, positions=position, dealias_px=dealias_px,
                                  preprocessing=prep)
            z = len(vis.zero_seeds())
            zero += z
            tiles += len(vis.seeds)
            warned += z if vis.zero_warning() else 0
            flat = vis.projections.reshape(len(vis.projections), -1).astype(np.float64)
            for k, (s, p) in enumerate(zip(vis.seeds, vis.projections)):
                if not np.any(p):
                    continue
                # the tile's mean correlation with the other units' projections of this image
                alike = [np.corrcoef(flat[k], flat[o])[0, 1] for o in range(len(flat)) if o != k and flat[o].std()]
                alike = float(np.mean(alike)) if alike else 0.0
                same.append(alike)
                box = box_of(s.position)
                pc = crop(vis._display(p), box, 0.0)  # as displayed (de-aliased after)
                own = crop(displays[i], box, 128)
                others = [crop(displays[m], box, 128) for m in range(len(images)) if m != i]
                ea.append(edge_alignment(pc, own))
                spec.append(image_specificity(pc, own, others))
                per.append(periodic_share(pc, rf.stride))
                leg.append(legibility(pc, own, others, rf.stride, alike))
        # (b) one unit seeded with 1.0 on every image
        seeds = np.zeros((len(units) * len(images),) + acts.shape[1:], np.float32)
        of = np.zeros(len(seeds), np.int64)
        for u, s in enumerate(units):
            for i in range(len(images)):
                seeds[(u * len(images) + i, s.channel) + tuple(s.position or ())] = 1.0
                of[u * len(images) + i] = i
        proj = probe.project(x, layer, seeds, of, rule=rule)
        corrs = []
        for u, s in enumerate(units):
            box = box_of(s.position)
            hwcs = [projection_to_hwc(proj[u * len(images) + i], prep.layout, prep.channel_order) for i in range(len(images))]
            corrs.append(pairwise_corr([crop(h, box, 0.0).ravel() for h in hwcs]))
            if u < FIG_UNITS:
                fig[(u, label)] = (s, [shown(h, dealias_px) for h in hwcs], rule, dealias_px)
        med = lambda v: float(np.median(v)) if v else float("nan")  # noqa: E731
        out.append({"net": which, "depth": depth, "layer": layer, "stride": int(rf.stride[0]), "label": label,
                    "rule": rule, "position": position, "tiles": tiles, "zero": zero, "warned": warned,
                    "unit_corr": float(np.nanmean(corrs)), "specificity": med(spec), "legibility": med(leg), "edge": med(ea),
                    "periodic": med(per), "alike": med(same), "inside_vis": inside[position][0], "inside_mine": inside[position][1]})
    if figures:
        save_figure(which, layer, depth, rf, fig, displays, len(units))
    return out


def energy_box(arrays, hw, keep: float = 0.02, pad: int = 4):
    """The box holding every pixel whose |p| exceeds ``keep`` of its array's max (a unit's
    effective field is much smaller than its nominal one), padded, square where the image allows."""
    ys, xs = [], []
    for a in arrays:
        mag = np.abs(a).sum(axis=-1)
        if mag.max() > 0:
            yy, xx = np.nonzero(mag > keep * mag.max())
            ys += [yy.min(), yy.max()]
            xs += [xx.min(), xx.max()]
    if not ys:
        return (0, hw[0] - 1), (0, hw[1] - 1)
    y0, y1, x0, x1 = min(ys) - pad, max(ys) + pad, min(xs) - pad, max(xs) + pad
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    y0, x0 = max(0, min(cy - side // 2, hw[0] - 1 - side)), max(0, min(cx - side // 2, hw[1] - 1 - side))
    return (y0, min(hw[0] - 1, y0 + side)), (x0, min(hw[1] - 1, x0 + side))


def save_figure(which, layer, depth, rf, fig, displays, n_units) -> None:
    """Per unit: rows image crop | before | after | masked patch, one column per image, cropped to
    the unit's effective field (where its projections are non-negligible)."""
    from PIL import Image

    from zfprobe.io.display import masked_patch, upsample
    from zfprobe.io.pictures import DEFAULT_PERCENTILE, contact_sheet, signed_to_uint8
    from zfprobe.studies.mining.compute import crop

    tiles, captions = [], []
    for u in range(min(FIG_UNITS, n_units)):
        seed, before, rule_b, _ = fig[(u, "before")]
        _, after, rule_a, _ = fig[(u, "after")]
        box = energy_box(before + after, displays[0].shape[:2])
        rows = {"image": [], "before": [], "after": [], "masked": []}
        for i, d in enumerate(displays):
            img = crop(d, box, 128).astype(np.uint8)
            rows["image"].append((img, f"c{seed.channel} image {i + 1}"))
            rows["before"].append((signed_to_uint8(crop(before[i], box, 0.0), DEFAULT_PERCENTILE), f"before: {rule_b}"))
            rows["after"].append((signed_to_uint8(crop(after[i], box, 0.0), DEFAULT_PERCENTILE), f"after: {rule_a}"))
            rows["masked"].append((masked_patch(img, crop(after[i], box, 0.0)), "masked patch"))
        for what in rows:
            for t, c in rows[what]:
                tiles.append(upsample(t, TILE))
                captions.append(c)
    sheet = contact_sheet(tiles, captions, columns=len(displays), tile_size=TILE, smooth=True,
                          title=f"{which} {layer} ({depth}, stride {rf.stride[0]})")
    Image.fromarray(sheet).save(ROOT / "docs" / "img" / f"mustshow_{which.replace(' ', '_')}_{depth}.png")


def table(rows) -> str:
    head = ("| net | layer | stride | before / after | rule | zero tiles (warned) | one unit across images: corr. | "
            "legibility | image-specific edge alignment | edge alignment | periodic share | units alike | "
            "RF >= 50% inside: visualize | mine |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['net']} | {r['depth']} `{r['layer']}` | {r['stride']} | {r['label']} | {r['rule']} | "
                     f"{r['zero']} of {r['tiles']} ({r['warned']}) | {r['unit_corr']:.2f} | {r['legibility']:.3f} | {r['specificity']:.3f} | "
                     f"{r['edge']:.2f} | {r['periodic']:.2f} | {r['alike']:.2f} | {r['inside_vis']:.0%} | {r['inside_mine']:.0%} |")
    return "\n".join(lines)


def report(which: str) -> None:
    """(e) ``zfprobe report`` with its defaults (3 layers spread over depth, the default rule and
    units, --position inside), fewer channels and unit pages so that it builds in minutes on 2
    cores, then screenshots of its pages in headless Chromium (docs/img/report_<net>_*.png)."""
    import shutil
    import subprocess

    from report_screenshots import main as screenshots

    data = Path(tempfile.mkdtemp(prefix=f"zfprobe-mustshow-{which}-"))
    if which == "effnet":
        from efficientnet_lite0 import imagenet_photos, onnx_path

        model, extra = onnx_path(), []
        for p, _ in imagenet_photos()[:8]:
            shutil.copy(p, data)
    else:
        from assets import rapidocr_det_onnx

        model, extra = rapidocr_det_onnx(), ["--input-size", "160x448", "--preset", "imagenet"]
        for p in ppocr_images():
            shutil.copy(p, data)
    out = data / "report"
    subprocess.run([sys.executable, "-m", "zfprobe.cli.main", "report", str(model), str(data), "--channels", "8",
                    "--unit-pages", "1", "--occlusion-images", "0", "-q", *extra, "-o", str(out)], check=True)
    screenshots(str(out), f"report_{which}")


def main() -> None:
    from zfprobe.studies.defaults import spread_layers

    ap = argparse.ArgumentParser()
    ap.add_argument("net", choices=("effnet", "ppocr"))
    ap.add_argument("--sizes", help="PP-OCRv4: input sizes HxW,... to compare (item 4); no figures")
    ap.add_argument("--report", action="store_true", help="(e): build a report and take its screenshots")
    args = ap.parse_args()
    if args.report:
        sys.path.insert(0, str(ROOT / "scripts"))
        report(args.net)
        return
    if args.sizes:
        for size in args.sizes.split(","):
            h, w = (int(v) for v in size.split("x"))
            probe, images, prep = setup(args.net, (h, w))
            rows = [r for d, l in zip(DEPTHS, spread_layers(probe, 3))
                    for r in layer_rows(f"{args.net} {h}x{w}", probe, images, prep, l, d, figures=False)]
            print(table(rows), flush=True)
        return
    probe, images, prep = setup(args.net)
    rows = []
    for depth, layer in zip(DEPTHS, spread_layers(probe, 3)):
        rows += layer_rows(args.net, probe, images, prep, layer, depth)
        print(table(rows[-2:]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
