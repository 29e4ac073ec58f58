"""Transfer / per-layer probes (paper Tables 4-7) against independent computations.

* features equal plain onnxruntime (intermediate outputs exposed in the model file, numpy
  pooling), and every split's accuracy equals a scikit-learn pipeline built here on those
  features, with the documented split rule;
* the three labelled-data forms (folder per class, CSV, .npz) give the same labels and features;
* the feature cache returns the same matrices and is keyed by the preprocessing;
* the from-scratch trainer's module, given the model's own weights, computes what onnxruntime
  computes (the translation of the graph to torch is exact), and trained from scratch it learns;
* bad input: one clear line, exit 2, nothing written.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zfprobe  # noqa: E402
from zfprobe.studies.transfer.features import extract  # noqa: E402
from zfprobe.io.labelled import open_labelled  # noqa: E402
from zfprobe.studies.transfer.compute import evaluate_transfer  # noqa: E402

from study_data import CLI_MODEL, digits_arrays  # noqa: E402
from test_cli import assert_clean_error, run_cli  # noqa: E402


def plain_ort_features(images_uint8: np.ndarray, layers: list[str], how: str = "avg") -> dict[str, np.ndarray]:
    """Globally pooled activations from onnxruntime on the model file with the layers
    exposed as outputs; preprocessing written out here (x / 255, as mnist_cnn.json says)."""
    model = onnx.load(str(CLI_MODEL))
    tensors = [{"fc": "logits"}.get(l, l) for l in layers]  # node fc writes the graph output 'logits'
    for t in tensors:
        if t not in [o.name for o in model.graph.output]:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (images_uint8.astype(np.float32) * np.float32(1 / 255.0))[:, None]
    per_image = [sess.run(tensors, {"image": x[i:i + 1]}) for i in range(len(x))]  # the file has batch 1
    outs = [np.concatenate([o[j] for o in per_image]) for j in range(len(layers))]
    pool = np.mean if how == "avg" else np.max
    return {l: pool(o.reshape(len(o), o.shape[1], -1), axis=2) for l, o in zip(layers, outs)}


def sklearn_accuracy(x, y, train, test, seed):
    """The documented classifier, assembled here from scikit-learn: one BLAS / OpenMP thread,
    and of the C values whose mean CV accuracy is within 1e-9 of the best, the smallest."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    def smallest_c_of_the_best(results):
        scores = results["mean_test_score"]
        return min(i for i, s in enumerate(scores) if s >= max(scores) - 1e-9)

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    grid = GridSearchCV(pipe, {"logisticregression__C": list(np.logspace(-3, 2, 6))},
                        cv=StratifiedKFold(3, shuffle=True, random_state=seed), refit=smallest_c_of_the_best)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(x[train], y[train])
        return float(np.mean(grid.predict(x[test]) == y[test]))


def documented_split(y, n, split, seed):
    rng = np.random.default_rng([seed, n, split])
    train = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)]))
    return train, np.setdiff1d(np.arange(len(y)), train)


def test_features_and_accuracy_equal_plain_onnxruntime_and_sklearn(tmp_path):
    images, labels = digits_arrays(400)
    path = tmp_path / "digits.npz"
    np.savez(path, images=images, labels=labels)
    probe = zfprobe.load(CLI_MODEL)
    data = open_labelled(str(path), probe.preprocessing, probe.input_shape)
    layers = ["relu2", "relu3"]
    feats = extract(probe, data.dataset, layers, "avg", batch_size=64)
    oracle = plain_ort_features(images, layers)
    for layer in layers:
        np.testing.assert_allclose(feats.matrices[layer], oracle[layer], rtol=1e-5, atol=1e-6)
    # the classifier stage on the oracle's features (avg pooling sums in a different order in
    # onnxruntime, and a 1e-7 difference may flip a CV tie; the CLI test below uses max pooling,
    # which is exact, end to end)
    result = evaluate_transfer(oracle, data.labels, [10], n_splits=2, seed=3)
    for s in result.scores:
        train, test = documented_split(labels, 10, s.split, 3)
        assert result.splits[f"10/{s.split}"] == train.tolist()
        want = sklearn_accuracy(oracle[s.layer], labels, train, test, 3 + s.split)
        assert s.accuracy == pytest.approx(want, abs=1e-12), (s.layer, s.split)
        assert s.n_test == len(test) == 300
    # fixed pretrained features beat chance by far on these digits
    assert min(s.accuracy for s in result.scores if s.layer == "relu3") > 0.8


@pytest.fixture
def busy_cpus():
    """A CPU-bound subprocess per core for the duration of a test (the load that once flipped a
    CV tie); ended by its own handle afterwards."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_classifier_stage_same_answer_under_load_and_any_thread_count(busy_cpus):
    """evaluate_transfer gives identical scores and C with 1 and 2 BLAS threads around it and
    with every core busy, and each equals the documented scikit-learn oracle."""
    from threadpoolctl import threadpool_limits

    images, labels = digits_arrays(400)
    feats = plain_ort_features(images, ["relu2", "relu3"])
    assert all(p.poll() is None for p in busy_cpus)  # the load is on
    runs = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            runs.append([s.to_dict() for s in evaluate_transfer(feats, labels, [10], n_splits=2, seed=3).scores])
    assert runs[0] == runs[1]
    for s in runs[0]:
        train, test = documented_split(labels, 10, s["split"], 3)
        assert s["accuracy"] == sklearn_accuracy(feats[s["layer"]], labels, train, test, 3 + s["split"])


def test_labelled_forms_agree_and_cache(tmp_path):
    from PIL import Image

    images, labels = digits_arrays(40)
    np.savez(tmp_path / "d.npz", images=images, labels=labels)
    rows = []
    for i, (im, lab) in enumerate(zip(images, labels)):
        (tmp_path / "folders" / f"c{lab}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "folders" / f"c{lab}" / f"{i:03d}.png")
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(im).save(tmp_path / "flat" / f"{i:03d}.png")
        rows.append([f"flat/{i:03d}.png", str(lab)])
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"]] + rows)
    probe = zfprobe.load(CLI_MODEL)
    prep, shape = probe.preprocessing, probe.input_shape
    npz = open_labelled(str(tmp_path / "d.npz"), prep, shape)
    listed = open_labelled(str(tmp_path / "list.csv"), prep, shape)
    folders = open_labelled(str(tmp_path / "folders"), prep, shape)
    assert npz.numeric and listed.numeric and not folders.numeric
    np.testing.assert_array_equal(npz.labels, labels)
    np.testing.assert_array_equal(listed.labels, labels)
    by_name = [int(folders.names[int(l)][1:]) for l in folders.labels]  # folders sort by class, then file
    order = [int(f.split(os.sep)[1][:3]) for f in folders.dataset.files]
    np.testing.assert_array_equal(by_name, labels[order])
    cache = tmp_path / "cache"
    a = extract(probe, npz.dataset, ["relu3"], "max", cache_dir=str(cache))
    b = extract(probe, listed.dataset, ["relu3"], "max", cache_dir=str(cache))
    np.testing.assert_allclose(a.matrices["relu3"], b.matrices["relu3"], rtol=1e-6)  # PNG round trip is lossless
    again = extract(probe, npz.dataset, ["relu3"], "max", cache_dir=str(cache))
    assert again.cached and not a.cached
    np.testing.assert_array_equal(again.matrices["relu3"], a.matrices["relu3"])
    other = prep.with_preset("unit")
    other.scale = 2 / 255.0
    npz2 = open_labelled(str(tmp_path / "d.npz"), other, shape)
    assert not extract(probe, npz2.dataset, ["relu3"], "max", cache_dir=str(cache)).cached
    assert len(os.listdir(cache)) == 3


def test_scratch_module_translates_the_graph_exactly_and_learns():
    torch = pytest.importorskip("torch")
    from zfprobe.adapters.training.graph_trainer import build_module, train_from_scratch

    probe = zfprobe.load(CLI_MODEL)
    images, labels = digits_arrays(300)
    x = np.ascontiguousarray((images.astype(np.float32) / 255.0)[:, None])
    net = build_module(probe.graph, 10, copy_weights=True).eval()
    with torch.no_grad():
        got = net(torch.from_numpy(x[:32])).numpy()
    sess = ort.InferenceSession(str(CLI_MODEL), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"image": x[i:i + 1]})[0] for i in range(32)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    predict = train_from_scratch(probe.graph, x[:200], labels[:200], epochs=15, seed=0)
    acc = np.mean(predict(x[200:]) == labels[200:])
    assert acc > 0.6, acc  # 10 classes: chance is 0.1


def test_scratch_module_with_batchnorm_equals_torch():
    torch = pytest.importorskip("torch")
    import nets
    from zfprobe.adapters.training.graph_trainer import build_module

    module = nets.resnet_bn()
    probe = zfprobe.attach(module, torch.zeros(1, 3, 64, 64))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32))
    net = build_module(probe.graph, 10, copy_weights=True).eval()
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), module(x).numpy(), rtol=1e-4, atol=1e-4)


def test_transfer_cli_matches_oracle(tmp_path):
    images, labels = digits_arrays(300)
    data = tmp_path / "digits.npz"
    np.savez(data, images=images, labels=labels)
    out = tmp_path / "out"
    r = run_cli("transfer", CLI_MODEL, data, "-l", "relu3", "-l", "fc", "--per-class", "8", "--splits", "1",
                "--seed", "5", "--epochs", "8", "--pool", "max", "--no-cache", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "training" in r.stderr and "features" in r.stderr  # progress bars on extraction and training
    files = sorted(os.listdir(out))
    assert files == ["manifest.json", "scores.csv", "summary.md", "table.csv", "table.md", "transfer.png"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"] == "transfer" and man["seed"] == 5 and man["model"]["sha256"]
    oracle = plain_ort_features(images, ["relu3", "fc"], "max")
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["softmax", "softmax", "scratch"]
    for row in rows:
        if row["method"] != "softmax":
            assert 0.1 < float(row["accuracy"]) <= 1.0
            continue
        train, test = documented_split(labels, 8, int(row["split"]), 5)
        assert man["training_items"][f"8/{row['split']}"] == train.tolist()
        want = sklearn_accuracy(oracle[row["layer"]], labels, train, test, 5 + int(row["split"]))
        assert float(row["accuracy"]) == pytest.approx(want, abs=1e-6), row
    assert "| trained from scratch |" in (out / "table.md").read_text()


def test_bad_inputs_clear_error_nothing_written(tmp_path):
    images, labels = digits_arrays(60)  # about 6 per class
    data = tmp_path / "d.npz"
    np.savez(data, images=images, labels=labels)
    out = tmp_path / "out"
    r = run_cli("transfer", CLI_MODEL, data, "-l", "relu3", "--per-class", "15", "-q", "-o", out)
    assert_clean_error(r, "fewer than the 16 needed", "--per-class 15")
    np.savez(tmp_path / "one.npz", images=images[labels == 3], labels=labels[labels == 3])
    r = run_cli("probe-layers", CLI_MODEL, tmp_path / "one.npz", "-l", "relu3", "--per-class", "2", "-q", "-o", out)
    assert_clean_error(r, "only one class")
    np.savez(tmp_path / "nolabels.npz", images=images)
    r = run_cli("transfer", CLI_MODEL, tmp_path / "nolabels.npz", "-l", "relu3", "-q", "-o", out)
    assert_clean_error(r, "no label array")
    assert not out.exists()


@pytest.mark.slow
def test_efficientnet_probe_layers_on_lfw_faces(tmp_path):
    """Per-layer probes on the real ImageNet EfficientNet-Lite0 with scikit-image's LFW subset
    (100 faces, 100 non-faces, 25x25 upscaled); the first block's features against the torch
    module's own activations, and accuracy rising from the stem to the deep blocks."""
    torch = pytest.importorskip("torch")
    import efficientnet_lite0 as eff
    from PIL import Image
    from skimage.data import lfw_subset

    faces = lfw_subset()
    pixels = np.stack([np.asarray(Image.fromarray((f * 255).round().astype(np.uint8)).resize((224, 224), Image.BICUBIC)
                                  .convert("RGB")) for f in faces])
    labels = np.array([0] * 100 + [1] * 100)
    keep = np.r_[0:40, 100:140]  # 40 per class keeps the test short
    np.savez(tmp_path / "lfw.npz", images=pixels[keep], labels=labels[keep])
    path = tmp_path / "eff.onnx"
    eff.export_onnx(path)
    out = tmp_path / "out"
    layers = ["/Clip", "/_blocks.4/Add", "/_blocks.14/Add"]
    r = run_cli("probe-layers", path, tmp_path / "lfw.npz", *sum((["-l", l] for l in layers), []), "--preset", "imagenet",
                "--per-class", "15", "--splits", "3", "--no-cache", "-q", "-o", out)
    assert r.returncode == 0, r.stderr
    table = list(csv.DictReader(open(out / "table.csv")))
    acc = {row["layer"]: float(row["mean_15"]) for row in table}
    assert acc["/_blocks.14/Add"] > acc["/Clip"] + 0.03, acc
    assert acc["/_blocks.14/Add"] > 0.9, acc
    # features of the first images against torch's own activations (avg pooled)
    probe = zfprobe.load(path)
    data = open_labelled(str(tmp_path / "lfw.npz"), probe.preprocessing.with_preset("imagenet"), probe.input_shape)
    got = extract(probe, data.dataset, ["/_blocks.4/Add"], "avg", limit=4).matrices["/_blocks.4/Add"]
    module = eff.efficientnet_lite0()
    x = (pixels[keep[:4]].astype(np.float32) / 255 - np.array(eff.MEAN, np.float32)) / np.array(eff.STD, np.float32)
    acts = []
    h = module._blocks[4].register_forward_hook(lambda m, i, o: acts.append(o.mean(dim=(2, 3))))
    with torch.no_grad():
        module(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    h.remove()
    np.testing.assert_allclose(got, acts[0].numpy(), rtol=1e-3, atol=1e-4)
