"""Keras front-end for the geometric layers of issue 9 (Conv2DTranspose with 'same' / 'valid' /
output_padding, UpSampling2D nearest and bilinear, Resizing nearest and bilinear), run by the
TensorFlow backend with live weights.

Oracle: ``tf.GradientTape`` through the Keras model with rule-aware rectifiers
(tests/adapters/test_keras_adapter.py's ``tf_oracle``), never zfprobe's output. Tolerance 1e-4 relative.
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
from test_keras_adapter import assert_close, keras_acts, tf_oracle, unit_seeds  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers


def geometric_model():
    keras.utils.set_random_seed(5)
    inp = keras.Input((24, 32, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="t1")(x)
    x = L.UpSampling2D(2, name="up_nearest")(x)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = L.Resizing(40, 56, interpolation="bilinear", name="rs_bilinear")(x)
    x = L.Resizing(30, 50, interpolation="nearest", name="rs_nearest")(x)
    x = L.UpSampling2D((2, 3), interpolation="bilinear", name="up_bilinear")(x)
    x = L.Conv2DTranspose(6, 4, strides=3, padding="valid", activation="relu", name="t2")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", output_padding=1, name="t3")(x)
    out = L.Conv2D(3, 3, activation="relu", name="head")(x)
    return keras.Model(inp, out)


def test_geometric_layers_match_gradient_tape():
    model = geometric_model()
    probe = zfprobe.attach(model)
    layers = {l.name: l for l in probe.layers()}
    assert all(l.invertible for l in layers.values())
    assert [layers[n].op_type for n in ("t1/preactivation", "up_nearest", "rs_bilinear", "t3")] == \
        ["ConvTranspose", "Resize", "Resize", "ConvTranspose"]
    imgs = np.random.RandomState(0).rand(2, 24, 32, 3).astype(np.float32)
    for layer in ("rs_nearest", "head"):
        acts = keras_acts(model, layer, imgs)
        assert_close(probe.activations(imgs, layer), acts)
        seeds = unit_seeds(acts, [0, 1], [0, 1])
        for rule in ("deconvnet", "gradient", "guided"):
            want = tf_oracle(model, layer, imgs, seeds, [0, 1], rule)
            assert np.abs(want).max() > 0
            assert_close(probe.project(imgs, layer, seeds, np.array([0, 1]), rule=rule), want)
