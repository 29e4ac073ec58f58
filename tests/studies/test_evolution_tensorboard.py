"""TensorBoard output of the evolution recorders: a 3-epoch torch run and a 3-epoch Keras run write
event files whose image and scalar summaries, read back with TensorBoard's / TensorFlow's own
readers, hold exactly the store's records (the store itself is checked against an oracle in
test_evolution.py): one image per map and epoch (the Fig. 4 tile of its projection) and the
strongest activation per map and epoch (the curve of activation.png)."""
from __future__ import annotations

import glob
import io
import os

import numpy as np
import pytest
from PIL import Image

from zfprobe.studies.evolution.compute import EvolutionStore
from zfprobe.studies.evolution.render import projection_tile

torch = pytest.importorskip("torch")
pytest.importorskip("tensorboard")
from test_evolution import SmallMnist, digits, train_epoch  # noqa: E402

EPOCHS = [1, 2, 3]


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def expected(store: EvolutionStore):
    """(tag -> {epoch: tile}, tag -> {epoch: value}) from the store's records."""
    images, scalars = {}, {}
    for epoch in store.epochs():
        record = store.read(epoch)
        for i, layer in enumerate(store.layers):
            for k, c in enumerate(layer["channels"]):
                images.setdefault(f"evolution/{layer['name']}/c{c}", {})[epoch] = \
                    projection_tile(record.projections[i][k], store.meta)
                scalars.setdefault(f"evolution/{layer['name']}/strongest_c{c}", {})[epoch] = float(record.values[i][k])
    return images, scalars


def check(store: EvolutionStore, images: dict, scalars: dict) -> None:
    """``images`` / ``scalars``: tag -> [(step, content)] in the order the event files hold them."""
    want_images, want_scalars = expected(store)
    assert store.epochs() == EPOCHS
    assert sorted(images) == sorted(want_images) and sorted(scalars) == sorted(want_scalars)
    for got, want in ((images, want_images), (scalars, want_scalars)):
        for tag in want:
            assert [step for step, _ in got[tag]] == EPOCHS, tag   # one event per epoch, in order
    for tag, events in images.items():
        for step, image in events:
            np.testing.assert_array_equal(image, want_images[tag][step], err_msg=f"{tag} @ {step}")
    for tag, events in scalars.items():
        for step, value in events:
            assert value == np.float32(want_scalars[tag][step]), (tag, step)
    # the pictures carry something: projections are not blank, and training moved the values
    assert all(len(np.unique(image)) > 2 for events in images.values() for _, image in events)
    assert any(len({v for _, v in events}) == len(EPOCHS) for events in scalars.values())


def test_torch_recorder_writes_tensorboard_summaries(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

    import zfprobe.torch as zt

    torch.manual_seed(3)
    x, y = digits(200)
    model = SmallMnist()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    board = tmp_path / "tb"
    rec = zt.EvolutionRecorder(model, x[::20], ["relu1", "relu2"], {"relu1": [0, 3], "relu2": [1, 2, 5]},
                               epochs=EPOCHS, out=str(tmp_path / "store"), tensorboard_dir=str(board))
    for epoch in EPOCHS:
        train_epoch(model, opt, x, y)
        assert rec.step(epoch)
    rec.close()

    acc = EventAccumulator(str(board), size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()
    images = {tag: [(e.step, decode(e.encoded_image_string)) for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    check(EvolutionStore(str(tmp_path / "store")), images, scalars)


def test_keras_callback_writes_tensorboard_summaries(tmp_path):
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    import zfprobe.keras as zk

    keras.utils.set_random_seed(1)
    x, y = digits(200)
    xk = x.numpy().transpose(0, 2, 3, 1)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 5, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="fc")(keras.layers.Flatten()(h)))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    board = tmp_path / "tb"
    cb = zk.EvolutionCallback(xk[::20], ["conv1", "conv2"], channels=[0, 2, 4], epochs=EPOCHS,
                              out=str(tmp_path / "store"), tensorboard_dir=str(board))
    model.fit(xk, y.numpy(), epochs=3, batch_size=50, verbose=0, callbacks=[cb])

    images, scalars = {}, {}
    for path in sorted(glob.glob(os.path.join(board, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                array = tf.make_ndarray(value.tensor)
                if plugin == "images":                    # [width, height, png, ...]
                    assert len(array) == 3
                    images.setdefault(value.tag, []).append((event.step, decode(array[2])))
                elif plugin == "scalars":
                    scalars.setdefault(value.tag, []).append((event.step, float(array)))
    check(EvolutionStore(str(tmp_path / "store")), images, scalars)
