"""The local mining engine's fast paths (issue 16): the sparse top-k merge against a brute-force
oracle on real activations full of exact ties, and identical results whatever the number of
forward runs in flight (one multi-threaded run, or one single-threaded run per core)."""
from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest

import zfprobe
from zfprobe.io.datasets import ArrayDataset, ImageFolder
from zfprobe.errors import OptionError
from zfprobe.studies.mining.compute import LayerTopK, forward_parallelism, mine

MODEL = str(files("zfprobe") / "data" / "mnist_cnn.onnx")


def lexsort_oracle(acts: np.ndarray, k: int):
    """Every activation of every image of each channel sorted at once by (value desc, image asc,
    raster position asc) with np.lexsort; each image's first entry is its strongest position; the
    first k distinct images are the top k. Returns images, values, flat positions [C, k]."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    area = flat.shape[2]
    img = np.repeat(np.arange(n), area)
    pos = np.tile(np.arange(area), n)
    out = np.full((3, c, k), -1, np.float64)
    for ch in range(c):
        vals = flat[:, ch, :].ravel().astype(np.float64)
        order = np.lexsort((pos, img, -vals))
        _, first = np.unique(img[order], return_index=True)  # each image's first (best) entry
        best = order[np.sort(first)][:k]
        out[0, ch, :len(best)], out[1, ch, :len(best)], out[2, ch, :len(best)] = img[best], vals[best], pos[best]
    return out[0].astype(np.int64), out[1].astype(np.float32), out[2].astype(np.int64)


@pytest.fixture(scope="module")
def digits():
    assets = pytest.importorskip("assets")
    try:
        return np.asarray(assets.mnist_5k()[0])[:1200]
    except Exception as exc:  # no registry
        pytest.skip(f"mnist_5k unavailable: {exc}")


@pytest.fixture(scope="module")
def probe():
    return zfprobe.load(MODEL)


@pytest.mark.parametrize("layer,step", [("conv2", 0.5), ("relu2", 0.25), ("conv3", 1.0), ("fc", 0.5)])
def test_topk_merge_equals_lexsort_oracle_on_quantized_real_activations(probe, digits, layer, step):
    """Real activations of the bundled net on 1,200 real digits, quantized to multiples of
    ``step`` so that exact ties abound (between images and within an image's map; relu2 also has
    all-zero maps), merged in batches of several sizes, against the brute-force lexsort."""
    x = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=digits)
    acts = np.concatenate([probe.activations(b.tensors, layer) for b in x.batches(400)])
    acts = (np.floor(acts / step) * step).astype(np.float32)
    if acts.ndim == 2:
        acts = acts[..., None]
    k = 9
    want_img, want_val, want_pos = lexsort_oracle(acts, k)
    per_channel = acts.reshape(len(acts), acts.shape[1], -1).max(axis=2)
    tied = sum(np.sum(per_channel[:, c] == want_val[c, -1]) for c in range(acts.shape[1]))
    assert tied > 2 * acts.shape[1]  # the k-th value of a channel is shared by other images: real ties
    for bs in (1, 37, 256, 1200):
        top = LayerTopK(layer, layer, acts.shape[1:], k)
        order = np.random.default_rng(bs).permutation(len(acts)) if bs == 37 else np.arange(len(acts))
        for lo in range(0, len(acts), bs):  # bs 37: images arrive out of index order
            idx = order[lo: lo + bs]
            top.update(acts[idx], idx)
        np.testing.assert_array_equal(top.images, want_img, err_msg=f"{layer} batch {bs}")
        np.testing.assert_array_equal(top.values, want_val, err_msg=f"{layer} batch {bs}")
        np.testing.assert_array_equal(top._positions, want_pos, err_msg=f"{layer} batch {bs}")


def test_merge_with_given_maxima_and_nan(probe, digits):
    """Maxima handed in by the caller give the same result as numpy's; a NaN map never beats a
    real value (it counts as -inf, as before issue 16)."""
    x = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=digits[:300])
    acts = np.concatenate([probe.activations(b.tensors, "conv2") for b in x.batches(300)])
    acts[5, 3, 2, 2] = np.nan
    a, b = LayerTopK("l", "t", acts.shape[1:], 4), LayerTopK("l", "t", acts.shape[1:], 4)
    for lo in range(0, 300, 64):
        a.update(acts[lo: lo + 64], np.arange(lo, min(lo + 64, 300)))
        flat = acts[lo: lo + 64].reshape(len(acts[lo: lo + 64]), acts.shape[1], -1)
        b.update(acts[lo: lo + 64], np.arange(lo, min(lo + 64, 300)), np.fmax.reduce(flat, axis=2))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.values, b.values)
    assert 5 not in a.images[3] and np.isfinite(a.values).all()


def _tops(result):
    return {l: (t.images, t.values, t._positions) for l, t in result.layers.items()}


@pytest.mark.parametrize("runs", ["1", "3"])
def test_runs_in_flight_give_identical_results_array_and_folder(probe, digits, tmp_path, monkeypatch, runs):
    """The default (one single-threaded run per core, here 2 on CI) against one multi-threaded
    run (the engine before issue 16) and 3 runs, on an array and on a folder of image files
    (decoded by the engine): the same top-k, bit for bit; the CLI's index.csv byte for byte."""
    from PIL import Image

    from zfprobe.cli.main import cli
    from click.testing import CliRunner

    layers = ["conv1", "relu2", "conv3", "fc"]
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=digits[:900])
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, d in enumerate(digits[:60]):
        Image.fromarray(d).save(folder / f"{i:03d}.png" if i % 2 else folder / f"{i:03d}.jpg")
    monkeypatch.delenv("ZFPROBE_MINE_RUNS", raising=False)
    default_arr = _tops(mine(probe, ds, layers, k=9, batch_size=64))
    default_dir = _tops(mine(probe, ImageFolder(str(folder), probe.preprocessing), layers, k=5, batch_size=7))
    r = CliRunner().invoke(cli, ["mine", MODEL, str(folder), "-l", "conv2", "-k", "4", "--no-project",
                                 "--batch-size", "5", "-q", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("ZFPROBE_MINE_RUNS", runs)
    assert forward_parallelism(probe.backend)[0] == int(runs)
    other_arr = _tops(mine(probe, ds, layers, k=9, batch_size=64))
    other_dir = _tops(mine(probe, ImageFolder(str(folder), probe.preprocessing), layers, k=5, batch_size=7))
    r = CliRunner().invoke(cli, ["mine", MODEL, str(folder), "-l", "conv2", "-k", "4", "--no-project",
                                 "--batch-size", "5", "-q", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    for want, got in ((default_arr, other_arr), (default_dir, other_dir)):
        for layer in layers:
            for w, g in zip(want[layer], got[layer]):
                np.testing.assert_array_equal(w, g, err_msg=f"{layer}, {runs} run(s)")
    assert (tmp_path / "a" / "index.csv").read_bytes() == (tmp_path / "b" / "index.csv").read_bytes()


def test_runs_setting_is_checked(probe, monkeypatch):
    monkeypatch.setenv("ZFPROBE_MINE_RUNS", "zero")
    with pytest.raises(OptionError, match="ZFPROBE_MINE_RUNS"):
        forward_parallelism(probe.backend)
    monkeypatch.setenv("ZFPROBE_MINE_RUNS", "0")
    with pytest.raises(OptionError, match="at least 1"):
        forward_parallelism(probe.backend)


def _photo_folder(tmp_path, digits):
    """Real photos (scikit-learn's two JPEGs), real digits as PNG and JPEG, one
    truncated file (skipped) and a non-image (ignored)."""
    import glob
    import os
    import shutil

    import sklearn
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, src in enumerate(sorted(glob.glob(os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images", "*.jpg")))):
        shutil.copyfile(src, folder / f"photo{i}.jpg")
    for i, d in enumerate(digits[:40]):
        Image.fromarray(d).save(folder / (f"d{i:03d}.png" if i % 3 else f"d{i:03d}.jpg"))
    (folder / "d005.png").write_bytes((folder / "d005.png").read_bytes()[:60])  # truncated: skipped
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_decoding_processes_give_the_same_batches_and_results(probe, digits, tmp_path):
    """Files decoded in 2 processes (what machines with more cores get) against decoding in the
    calling thread: the same batches (indices, skipped files with their reasons, tensors bit for
    bit) and the same mining result."""
    folder = _photo_folder(tmp_path, digits)
    here = ImageFolder(str(folder), probe.preprocessing, decoders=0)
    procs = ImageFolder(str(folder), probe.preprocessing, decoders=2)
    for start, bs in ((0, 6), (7, 4)):
        a, b = list(here.batches(bs, start)), list(procs.batches(bs, start))
        assert len(a) == len(b) and sum(len(x.indices) + len(x.skipped) for x in a) == len(here) - start
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.indices, y.indices)
            np.testing.assert_array_equal(x.tensors, y.tensors)
            assert x.skipped == y.skipped
        assert any(x.skipped for x in a) == (start <= 5)  # d005.png, the 6th file, is truncated
    with pytest.warns(UserWarning, match="skipped d005.png"):
        ra = mine(probe, here, ["conv2", "conv3"], k=5, batch_size=6)
    with pytest.warns(UserWarning, match="skipped d005.png"):
        rb = mine(probe, procs, ["conv2", "conv3"], k=5, batch_size=6)
    assert ra.skipped == rb.skipped and len(ra.skipped) == 1
    for layer in ("conv2", "conv3"):
        for w, g in zip(_tops(ra)[layer], _tops(rb)[layer]):
            np.testing.assert_array_equal(w, g)


def test_decoders_setting_is_checked(probe, tmp_path, monkeypatch, digits):
    from zfprobe.io.datasets import DatasetError, decoder_processes

    monkeypatch.setenv("ZFPROBE_DECODERS", "3")
    assert decoder_processes() == 3
    monkeypatch.setenv("ZFPROBE_DECODERS", "-1")
    with pytest.raises(DatasetError, match="ZFPROBE_DECODERS"):
        decoder_processes()
