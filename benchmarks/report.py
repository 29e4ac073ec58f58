"""``zfprobe report`` build time, split by stage: the bundled MNIST model and EfficientNet-Lite0.

Each model is built twice in one run: cold (empty cache: mining runs) and warm (the rerun reuses
the mining checkpoint keyed by the model hash); the warm/cold ratio is printed. There is no
third-party tool that writes the same static site (OpenAI Microscope's pipeline is not
published), so the comparison is zfprobe against itself: the cost of each stage, and what
reuse saves.

EfficientNet-Lite0 (real ImageNet weights, tests/efficientnet_lite0.py) is reported over 24 real
photos (foolbox's 20 ImageNet samples and the 4 bundled photos) at three layers whose
deconvnets take the receptive-field-windowed path (the deepest layers' deconvnets span the whole
network, about 6 s per seed on 2 shared cores, so a full-layer report there takes hours).

    python benchmarks/report.py [--skip-effnet] [--unit-pages 8] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

EFFNET_LAYERS = ["/_blocks.2/Add", "/_blocks.4/Add", "/_blocks.6/Add"]


def build(model: str, out: str, cache: str, **options) -> tuple[float, dict]:
    import zfprobe
    from zfprobe.report import ReportOptions, build_report

    os.environ["ZFPROBE_CACHE"] = cache
    t = time.perf_counter()
    probe = zfprobe.load(model)
    meta = build_report(probe, out, ReportOptions(progress=False, **options))
    return time.perf_counter() - t, meta


def run(name: str, model: str, keep: str | None, **options) -> None:
    work = tempfile.mkdtemp(prefix="zfprobe-bench-report-")
    cache = os.path.join(work, "cache")
    out = os.path.join(keep or work, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    cold, meta = build(model, out, cache, **options)
    warm, meta_w = build(model, out, cache, **options)
    print(f"{name}: {meta['files_count']} files, {meta['size_bytes'] / 1e6:.1f} MB, "
          f"{meta['mining']['images_used']} images, layers {', '.join(meta['layers'])}")
    for label, seconds, m in (("cold", cold, meta), ("warm", warm, meta_w)):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in m["timings_s"].items())
        print(f"  {label}: {seconds:.1f} s total ({stages})")
    print(f"  warm/cold: {warm / cold:.2f} (mining {meta_w['timings_s'].get('mining', 0):.2f} s vs "
          f"{meta['timings_s'].get('mining', 0):.2f} s)")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-effnet", action="store_true")
    ap.add_argument("--unit-pages", type=int, default=8)
    ap.add_argument("--keep", help="Write the reports into this folder (kept).")
    args = ap.parse_args()
    import zfprobe

    bundled = os.path.join(os.path.dirname(zfprobe.__file__), "data", "mnist_cnn.onnx")
    run("mnist", bundled, args.keep, unit_pages=args.unit_pages)
    if args.skip_effnet:
        return
    from efficientnet_lite0 import imagenet_photos, onnx_path
    from zfprobe.studies.defaults import PHOTOS

    photos = tempfile.mkdtemp(prefix="zfprobe-bench-photos-")
    for path, _ in imagenet_photos():
        shutil.copy(path, photos)
    for f in os.listdir(PHOTOS):
        if f.endswith(".jpg"):
            shutil.copy(os.path.join(PHOTOS, f), photos)
    run("efficientnet_lite0", str(onnx_path()), args.keep, data=photos, layers=EFFNET_LAYERS,
        unit_pages=args.unit_pages)
    shutil.rmtree(photos, ignore_errors=True)


if __name__ == "__main__":
    main()
