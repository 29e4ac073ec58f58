"""Invariance curves: zfprobe's batched, truncated pass against the per-image loop a user would write.

The work (the paper's Fig. 5 defaults): N photos (foolbox's labelled ImageNet samples) x
(vertical translation -60..60 px step 10, scale 1..1.8 step 0.1, rotation 0..350 step 10)
= 58 transformed images per photo, at 224x224. Two measurements:

(a) distances only, at an early and a middle layer (the network is cut after the deepest);
(a1) distances at the first of them alone (the paper's layer 1: the network is cut right there);
(b) the full Fig. 5: the same distances plus the true-class probability (the whole network).

The loop's session always holds the whole network (the user exposes the layers as outputs);
that is what a per-image loop on a model file does.

The alternative is the loop a user writes with onnxruntime: one session on the model with the
layer outputs added as graph outputs, then for every photo and amount: the same Pillow
transform, normalize, ``session.run`` on one image, numpy distances and softmax. Both sides use
the same onnxruntime with the same number of threads; results are compared in the same run.

    python benchmarks/invariance.py [--model M.onnx --layers a,b] [--images 4] [--threads 1]

Default model: ZFNet (tests/nets.py, random He weights, 1000 classes), layers conv1 and conv3
(after their ReLUs); any ImageNet ONNX file works with --model and --layers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))


def zfnet_onnx(seed: int = 0) -> tuple[str, list[str]]:
    import torch

    from nets import export_onnx, zfnet

    folder = os.path.join(tempfile.gettempdir(), "zfprobe-bench-invariance")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"zfnet_seed{seed}.onnx")
    layers_file = path + ".layers"
    if not os.path.isfile(path):
        names = export_onnx(zfnet(seed).eval(), torch.zeros(1, 3, 224, 224), path + ".part")
        os.replace(path + ".part", path)
        with open(layers_file, "w") as f:
            f.write(",".join(names[k] for k in ("relu1", "relu3")))
    with open(layers_file) as f:
        return path, f.read().split(",")


def user_loop(session, input_name: str, layers: list[str], logits: str | None, photos, prep, plan, fill):
    """What a user writes: every transformed image alone through the whole network."""
    from zfprobe.studies.invariance.transforms import apply
    from zfprobe.io.preprocess import read_pixels

    outputs = list(layers) + ([logits] if logits else [])
    dist, prob = [], []
    for path in photos:
        px = read_pixels(path, prep)
        ref = session.run(outputs, {input_name: prep.to_tensor(px)})
        label = int(np.argmax(ref[-1])) if logits else None
        for t in plan:
            for amount in t.amounts:
                out = session.run(outputs, {input_name: prep.to_tensor(apply(px, t.kind, amount, fill))})
                dist.append([np.linalg.norm(o - r) for o, r in zip(out[:len(layers)], ref)])
                if logits:
                    z = out[-1].astype(np.float64).ravel()
                    e = np.exp(z - z.max())
                    prob.append(e[label] / e.sum())
    return np.array(dist), (np.array(prob) if logits else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an ImageNet ONNX file (default: ZFNet with random weights)")
    ap.add_argument("--layers", help="comma-separated layer (tensor) names, with --model")
    ap.add_argument("--images", type=int, default=4, help="number of photos")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads, both sides")
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort

    import zfprobe
    from assets import foolbox_samples
    from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend
    from zfprobe.studies.invariance.transforms import fill_pixel
    from zfprobe.studies.invariance.compute import invariance, resolve_transforms

    if args.model:
        path, layers = args.model, args.layers.split(",")
    else:
        path, layers = zfnet_onnx()
    photos = [str(p) for p, _ in foolbox_samples("imagenet")[:args.images]]
    probe = zfprobe.load(path)
    probe.backend = OnnxRuntimeBackend("cpu", threads=args.threads)
    prep = probe.preprocessing.with_preset("imagenet")
    plan = resolve_transforms(["translate-y", "scale", "rotate"], tuple(prep.size))
    fill = fill_pixel("mean", prep)
    n = len(photos) * sum(len(t.amounts) for t in plan)
    print(f"{os.path.basename(path)}, layers {', '.join(layers)}; {len(photos)} photos x "
          f"{sum(len(t.amounts) for t in plan)} transforms = {n} images; {args.threads} onnxruntime thread(s)")

    model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    tensors = [probe.resolve(l) for l in layers]   # node names -> the tensors the session exposes
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    logits = probe.graph.outputs[0]

    cases = [("(a) distances only, all layers", False, layers, tensors),
             (f"(a1) distances only, {layers[0]} alone", False, layers[:1], tensors[:1]),
             ("(b) distances + p(true class), all layers", True, layers, tensors)]
    for title, with_probs, case_layers, case_tensors in cases:
        def ours():
            t = time.perf_counter()
            res = invariance(probe, photos, case_layers, transforms=["translate-y", "scale", "rotate"], preprocessing=prep,
                             probability=with_probs)
            return res, time.perf_counter() - t

        res, cold = ours()
        res, warm = ours()
        t = time.perf_counter()
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        d_ref, p_ref = user_loop(session, probe.input_name, case_tensors, logits if with_probs else None, photos, prep, plan, fill)
        t_loop = time.perf_counter() - t
        d_ours = np.concatenate([np.concatenate([res.distance[t.kind][i] for t in plan]) for i in range(len(photos))])
        err = float(np.max(np.abs(d_ours - d_ref) / np.maximum(1e-6, np.abs(d_ref))))
        line = f"max relative distance difference {err:.1e}"
        ok = err < 1e-3
        if with_probs:
            p_ours = np.concatenate([np.concatenate([res.probability[t.kind][i] for t in plan]) for i in range(len(photos))])
            perr = float(np.abs(p_ours - p_ref).max())
            ok = ok and perr < 1e-5
            line += f", max |p difference| {perr:.1e}"
        print(f"{title}: zfprobe {warm:.2f} s (first call {cold:.2f} s, batch {res.batch_size}); per-image "
              f"onnxruntime loop {t_loop:.2f} s; speed-up {t_loop / warm:.1f}x (first call {t_loop / cold:.1f}x); "
              f"results equal: {'yes' if ok else 'NO'} ({line})")
        if not ok:
            raise SystemExit("results differ: the benchmark is not comparing the same work")


if __name__ == "__main__":
    main()
