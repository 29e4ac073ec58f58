"""Peak resident memory and time of whole-layer / whole-dataset runs at two sizes (issue 22).

Each run is one child process (``python -m zfprobe.cli.main ...``) started from this small
driver; its peak RSS is the child's VmHWM (read by the child at exit: ``getrusage``'s ru_maxrss
survives exec on Linux, so a child of a larger process would start at the parent's size), its
time the wall clock. For each case the ratio of peak memory between the larger and the smaller
size is printed; the streamed pictures and the liveness-sized batches should keep it near 1.

    python benchmarks/scale.py [--cases mine,report,visualize,effreport,headreport] [--keep DIR]

Cases:
  mine       the bundled MNIST net, 3 layers (pool1, relu2, relu3), sheets and channel PNGs, over
             1,000 and 10,000 real digits (scikit-learn's digits upscaled, repeated to 10,000)
  report     EfficientNet-Lite0 (real weights), `zfprobe report` with its defaults at
             /_blocks.6/Add, over 24 and 240 photos (foolbox's 20 ImageNet samples and the 4
             bundled photos; 240 = those 24 plus flipped and cropped copies)
  visualize  EfficientNet-Lite0, `visualize --top N` at its head /Clip_1 (1,280 channels): N = 64, 512
  effreport  `zfprobe report` with its defaults on EfficientNet-Lite0 over the 24 photos (the
             issue's target: <= 5 minutes, peak RSS <= 2 GB)
  headreport `zfprobe report` of the head /Clip_1 of EfficientNet-Lite0 over 100 photos,
             `--channels 256` and `--all-channels` (1,280): peak RSS <= 2 GB, time linear in
             channels x k (long: about 20-40 minutes on 2 shared cores)

Each row also prints the load average (1 minute) at its start and end: the machine is shared,
and wall times move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

CHILD = """
import sys, runpy
sys.argv = ["zfprobe"] + sys.argv[1:]
try:
    from zfprobe.cli.main import cli
    code = cli.main(args=sys.argv[1:], prog_name="zfprobe", standalone_mode=False)
finally:
    with open("/proc/self/status") as f:
        hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    sys.stderr.write(f"\\nZFPROBE_PEAK_KIB={hwm}\\n")
"""


def run(args: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Peak RSS (MB) and seconds of one CLI run in a child process."""
    import resource

    load0 = os.getloadavg()[0]
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})), timeout=timeout)
    seconds = time.perf_counter() - t
    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds: what the load average does not move
    cpu = ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime
    peak = [int(l.split("=")[1]) for l in r.stderr.splitlines() if l.startswith("ZFPROBE_PEAK_KIB=")]
    if r.returncode != 0 or not peak:
        raise SystemExit(f"{' '.join(map(str, args[:3]))}: failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return {"peak_mb": peak[0] / 1024, "seconds": seconds, "cpu_s": round(cpu, 1),
            "load": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def photos(folder: str, n: int) -> str:
    """``n`` real photos in ``folder``: foolbox's 20 ImageNet samples and the 4 bundled photos,
    then flipped and cropped copies of them (named so) up to ``n``."""
    from PIL import Image, ImageOps

    from assets import foolbox_samples

    os.makedirs(folder, exist_ok=True)
    base = [str(p) for p, _ in foolbox_samples("imagenet")]
    bundled = os.path.join(ROOT, "zfprobe", "data", "photos")
    base += sorted(os.path.join(bundled, f) for f in os.listdir(bundled) if f.endswith(".jpg"))
    variants = [lambda im: im, ImageOps.mirror] + [
        (lambda f: (lambda im: im.crop((int(im.width * f), int(im.height * f), int(im.width * (1 - f)),
                                        int(im.height * (1 - f))))))(f) for f in (0.05, 0.1, 0.15, 0.2)]
    i = 0
    while i < n:
        src, how = base[i % len(base)], variants[(i // len(base)) % len(variants)]
        with Image.open(src) as im:
            how(im.convert("RGB")).save(os.path.join(folder, f"{i:04d}_{os.path.basename(src)}"), quality=92)
        i += 1
    return folder


def digits(path: str, n: int) -> str:
    """``n`` real handwritten digits (scikit-learn's 1,797, 8x8 upscaled to 28x28, repeated)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits().images
    up = np.stack([np.asarray(Image.fromarray((im * 16).clip(0, 255).astype(np.uint8)).resize((28, 28), Image.BILINEAR))
                   for im in d])
    np.save(path, up[np.arange(n) % len(up)])
    return path


def case_mine(tmp: str) -> list[tuple[str, dict]]:
    model = os.path.join(ROOT, "zfprobe", "data", "mnist_cnn.onnx")
    out = []
    for n in (1000, 10000):
        data = digits(os.path.join(tmp, f"digits{n}.npy"), n)
        out.append((f"mine, 3 layers, sheets, {n:,} digits",
                    run(["mine", model, data, "-l", "pool1", "-l", "relu2", "-l", "relu3", "-q", "-o",
                         os.path.join(tmp, f"mine{n}")])))
    return out


def effnet() -> str:
    import efficientnet_lite0 as eff

    return str(eff.onnx_path())


def case_report(tmp: str) -> list[tuple[str, dict]]:
    out = []
    for n in (24, 240):
        data = photos(os.path.join(tmp, f"photos{n}"), n)
        out.append((f"report, /_blocks.6/Add, defaults, {n} photos",
                    run(["report", effnet(), data, "-l", "/_blocks.6/Add", "-q", "-o", os.path.join(tmp, f"report{n}")],
                        env={"ZFPROBE_CACHE": os.path.join(tmp, f"cache{n}")})))
    return out


def case_visualize(tmp: str) -> list[tuple[str, dict]]:
    folder = photos(os.path.join(tmp, "photos24"), 24)
    image = os.path.join(folder, sorted(os.listdir(folder))[0])
    return [(f"visualize --top {n}, /Clip_1 (head)",
             run(["visualize", effnet(), "-i", image, "-l", "/Clip_1", "--top", str(n), "-o",
                  os.path.join(tmp, f"vis{n}")])) for n in (64, 512)]


def case_effreport(tmp: str) -> list[tuple[str, dict]]:
    data = photos(os.path.join(tmp, "photos24"), 24)
    return [("report with its defaults, 24 photos",
             run(["report", effnet(), data, "-q", "-o", os.path.join(tmp, "effreport")],
                 env={"ZFPROBE_CACHE": os.path.join(tmp, "cache-eff")}))]


def case_headreport(tmp: str) -> list[tuple[str, dict]]:
    data = photos(os.path.join(tmp, "photos100"), 100)
    out = []
    for what in (["--channels", "256"], ["--all-channels"]):
        out.append((f"report /Clip_1 {' '.join(what)}, 100 photos",
                    run(["report", effnet(), data, "-l", "/Clip_1", *what, "-q", "-o", os.path.join(tmp, f"head{what[-1]}")],
                        env={"ZFPROBE_CACHE": os.path.join(tmp, f"cache-head{what[-1]}")}, timeout=3 * 3600)))
    return out


CASES = {"mine": case_mine, "report": case_report, "visualize": case_visualize, "effreport": case_effreport,
         "headreport": case_headreport}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="mine,report,visualize,effreport", help="comma-separated; headreport is long")
    ap.add_argument("--keep", help="keep the outputs in this folder")
    args = ap.parse_args()
    tmp = args.keep or tempfile.mkdtemp(prefix="zfprobe-scale-")
    os.makedirs(tmp, exist_ok=True)
    results = {}
    try:
        for name in args.cases.split(","):
            rows = CASES[name](tmp)
            for label, r in rows:
                print(f"{label:55s} peak RSS {r['peak_mb']:8.1f} MB  {r['seconds']:8.1f} s  (CPU {r['cpu_s']:.0f} s)  load {r['load'][0]:.1f}-{r['load'][1]:.1f}",
                      flush=True)
            if len(rows) == 2:
                print(f"{'':55s} ratio of peak RSS (larger / smaller): {rows[1][1]['peak_mb'] / rows[0][1]['peak_mb']:.2f}; "
                      f"of time: {rows[1][1]['seconds'] / rows[0][1]['seconds']:.2f}", flush=True)
            results[name] = rows
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
