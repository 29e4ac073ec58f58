"""Feature evolution (Fig. 4): records equal a recomputation from saved checkpoints (torch
autograd oracle with the deconvnet rule; Keras' own forward pass), the store survives resumed
and interrupted runs, and ``zfprobe evolution`` renders it."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from zfprobe.cli.main import cli
from zfprobe.studies.evolution.compute import EvolutionStore, EvolutionStoreError

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import zfprobe.torch as zt  # noqa: E402
from oracle import module_activations, oracle_from_module  # noqa: E402


class SmallMnist(nn.Module):
    """The bundled model's architecture (scripts/make_default_model.py), narrower for CI speed."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def digits(n):
    from assets import mnist_5k

    x, y = mnist_5k()
    return torch.from_numpy(x[:n].astype(np.float32) / 255)[:, None].contiguous(), torch.from_numpy(y[:n].copy())


def train_epoch(model, opt, x, y, batch=50):
    model.train()
    for i in range(0, len(x), batch):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
        opt.step()


LAYERS = ["relu1", "relu2"]
CHANNELS = {"relu1": [0, 3, 5], "relu2": [1, 2, 7, 11]}


def test_record_equals_recomputation_from_checkpoints(tmp_path):
    torch.manual_seed(0)
    x, y = digits(400)
    probe_x = x[::20]                      # 20 probe images
    model = SmallMnist()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    rec = zt.EvolutionRecorder(model, probe_x, LAYERS, CHANNELS, epochs=[1, 3], out=str(tmp_path / "store"))
    checkpoints = {}
    for epoch in range(1, 4):
        train_epoch(model, opt, x, y)
        assert rec.step(epoch) == (epoch in (1, 3))
        checkpoints[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    store = EvolutionStore(str(tmp_path / "store"))
    assert store.epochs() == [1, 3]
    images = probe_x.numpy()
    for epoch in (1, 3):
        fresh = SmallMnist()
        fresh.load_state_dict(checkpoints[epoch])
        record = store.read(epoch)
        for i, layer in enumerate(LAYERS):
            chans = CHANNELS[layer]
            acts = module_activations(fresh, images, layer)[:, chans]          # plain torch forward
            flat = acts.transpose(1, 0, 2, 3).reshape(len(chans), -1)
            arg = flat.argmax(1)
            img, yy, xx = np.unravel_index(arg, (acts.shape[0], acts.shape[2], acts.shape[3]))
            np.testing.assert_allclose(record.values[i], flat.max(1), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(record.images[i], img)
            np.testing.assert_array_equal(record.positions[i], np.stack([yy, xx], 1))
            full = np.zeros((len(chans), module_activations(fresh, images[:1], layer).shape[1]) + acts.shape[2:], np.float32)
            for k, c in enumerate(chans):
                full[k, c, yy[k], xx[k]] = flat[k, arg[k]]
            expected = oracle_from_module(fresh, images, layer, full, img, rule="deconvnet")
            scale = np.abs(expected).max()
            np.testing.assert_allclose(record.projections[i], expected, atol=1e-5 * scale, rtol=0)
            assert np.abs(record.projections[i]).max() > 0
    # the two recorded epochs differ (the weights moved): the recorder did not reuse a snapshot
    assert not np.allclose(store.read(1).projections[1], store.read(3).projections[1])


def test_resume_interrupt_and_mismatch(tmp_path):
    torch.manual_seed(1)
    x, _ = digits(8)
    out = str(tmp_path / "store")
    model = SmallMnist()
    rec = zt.EvolutionRecorder(model, x, ["relu1"], [0, 1], epochs=None, out=out)
    assert rec.step(1)
    first = open(os.path.join(out, "epoch_000001.npz"), "rb").read()
    # an interrupted write leaves only a temporary file: never read, removed on the next open
    with open(os.path.join(out, ".tmp-crash.part"), "wb") as f:
        f.write(b"half a record")
    with torch.no_grad():
        model.conv1.weight.mul_(-1)
    rec2 = zt.EvolutionRecorder(model, x, ["relu1"], [0, 1], epochs=None, out=out)   # the resumed run
    assert not os.path.exists(os.path.join(out, ".tmp-crash.part"))
    assert not rec2.step(1)                    # epoch 1 is stored: kept as first recorded
    assert open(os.path.join(out, "epoch_000001.npz"), "rb").read() == first
    assert rec2.step(2)
    assert EvolutionStore(out).epochs() == [1, 2]
    with pytest.raises(EvolutionStoreError, match="different layers"):
        zt.EvolutionRecorder(model, x, ["relu2"], [0, 1], out=out)
    with pytest.raises(EvolutionStoreError, match="probe images sha256"):
        zt.EvolutionRecorder(model, x + 1, ["relu1"], [0, 1], out=out)
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["format"] == "zfprobe-evolution" and meta["version"] == 1
    meta["version"] = 2
    newer = tmp_path / "newer"
    newer.mkdir()
    json.dump(meta, open(newer / "meta.json", "w"))
    with pytest.raises(EvolutionStoreError, match="version 2"):
        EvolutionStore(str(newer))


def test_bad_recorder_input(tmp_path):
    from zfprobe.errors import ZfprobeError

    x, _ = digits(4)
    model = SmallMnist()
    with pytest.raises(ZfprobeError, match="channels"):
        zt.EvolutionRecorder(model, x, ["relu1"], [99], out=str(tmp_path / "a"))
    with pytest.raises(ZfprobeError, match="not a feature map"):
        zt.EvolutionRecorder(model, x, ["fc"], out=str(tmp_path / "b"))
    with pytest.raises(ZfprobeError):
        zt.EvolutionRecorder(model, x[:0], ["relu1"], out=str(tmp_path / "c"))


def test_cli_renders_store(tmp_path):
    torch.manual_seed(2)
    x, y = digits(200)
    model = SmallMnist()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    store = str(tmp_path / "store")
    rec = zt.EvolutionRecorder(model, x[::10], LAYERS, None, epochs=[1, 2], out=store)
    for epoch in (1, 2):
        train_epoch(model, opt, x, y)
        rec.step(epoch)
    r = CliRunner().invoke(cli, ["evolution", store])
    assert r.exit_code == 0, r.output
    fig = tmp_path / "store" / "figures"
    for name in ("evolution_relu1.png", "evolution_relu2.png", "activation.png", "strongest.csv", "summary.md", "manifest.json"):
        assert (fig / name).is_file(), name
    manifest = json.loads((fig / "manifest.json").read_text())
    assert manifest["command"] == "evolution" and manifest["epochs"] == [1, 2]
    rows = (fig / "strongest.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (8 + 8)
    # not a store / an empty store: one line, exit 2, nothing written
    for bad in (tmp_path / "nothing", tmp_path):
        out = tmp_path / "bad_out"
        r = CliRunner().invoke(cli, ["evolution", str(bad), "-o", str(out)])
        assert r.exit_code == 2 and r.output.startswith("zfprobe: error: ") and len(r.output.strip().splitlines()) == 1
        assert not out.exists()


def test_keras_callback_records_keras_forward(tmp_path):
    keras = pytest.importorskip("keras")
    import zfprobe.keras as zk

    keras.utils.set_random_seed(0)
    x, y = digits(300)
    xk = x.numpy().transpose(0, 2, 3, 1)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 5, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    out = keras.layers.Dense(10, name="fc")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    store = str(tmp_path / "kstore")
    cb = zk.EvolutionCallback(xk[::15], ["conv1", "conv2"], epochs=[1, 2], out=store)
    model.fit(xk, y.numpy(), epochs=2, batch_size=50, verbose=0, callbacks=[cb])
    record = EvolutionStore(store).read(2)
    feats = keras.Model(inp, [model.get_layer("conv1").output, model.get_layer("conv2").output]).predict(xk[::15], verbose=0)
    for i, a in enumerate(feats):          # Keras' own forward, NHWC
        a = a[..., :8]
        flat = a.transpose(3, 0, 1, 2).reshape(8, -1)
        np.testing.assert_allclose(record.values[i], flat.max(1), rtol=1e-5, atol=1e-6)
        img, yy, xx = np.unravel_index(flat.argmax(1), a.shape[:3])
        np.testing.assert_array_equal(record.images[i], img)
        assert record.projections[i].shape == (8, 28, 28, 1)
    # a resumed fit continues the same store
    cb2 = zk.EvolutionCallback(xk[::15], ["conv1", "conv2"], epochs=[1, 2, 3], out=store)
    model.fit(xk, y.numpy(), epochs=3, initial_epoch=2, batch_size=50, verbose=0, callbacks=[cb2])
    assert EvolutionStore(store).epochs() == [1, 2, 3]
