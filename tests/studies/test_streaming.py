"""Pictures in bounded batches (zfprobe/studies/mining/stream.py):

* the streamed outputs are byte-identical to the whole-array path (render_layer + the sheets of
  the tiles held in memory; Visualization.save), with groups as small as one channel;
* memory (tracemalloc: numpy's arrays included) does not grow with channels x k when streamed,
  while holding every tile does;
* a request that cannot fit stops before any work, with one line naming the options.
"""
from __future__ import annotations

import hashlib
import os
import tracemalloc
from importlib.resources import files

import pytest

import zfprobe
from zfprobe.io import memory
from zfprobe.io.datasets import ArrayDataset, open_dataset
from zfprobe.studies.mining.compute import mine
from zfprobe.studies.mining.render import render_layer, save_mining
from zfprobe.studies.mining.stream import streamed_layer

MODEL = str(files("zfprobe") / "data" / "mnist_cnn.onnx")
SAMPLES = str(files("zfprobe") / "data" / "samples")
DIGIT = str(files("zfprobe") / "data" / "digit.png")


@pytest.fixture(scope="module")
def probe():
    return zfprobe.load(MODEL)


def digests(folder) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            if n.endswith(".png"):
                path = os.path.join(root, n)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_streamed_mining_pictures_equal_the_whole_array_path(probe, tmp_path, monkeypatch):
    dataset = open_dataset(SAMPLES, probe.preprocessing, probe.input_shape)
    result = mine(probe, dataset, ["relu2", "relu3"], k=5)
    held = {l: render_layer(probe, result, l) for l in ("relu2", "relu3")}
    save_mining(str(tmp_path / "held"), probe, result, held, "deconvnet", "identity", per_page=7)
    monkeypatch.setitem(memory.SHARES, "pictures", 1e-6)  # groups of one channel
    streamed = {l: streamed_layer(probe, result, l) for l in ("relu2", "relu3")}
    save_mining(str(tmp_path / "streamed"), probe, result, streamed, "deconvnet", "identity", per_page=7)
    want, got = digests(tmp_path / "held"), digests(tmp_path / "streamed")
    assert len(want) == 5 + 10 + 32 + 64 and got == want  # sheets (7 channels a page) and channel PNGs
    assert all(not p.tiles for p in streamed.values())  # nothing kept after writing


def _peak_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streamed_memory_does_not_grow_with_channels_times_k(probe, tmp_path, monkeypatch):
    """Top-20 of 8 vs 40 channels of relu3 over 200 digits: holding every tile, the peak grows
    with the channels (by more than 1 MB: 640 more units of two uint8 crops); streamed, it
    grows by less than a fifth of that (one group and one page of blocks at a time)."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from study_data import digits_arrays

    images, _ = digits_arrays(200)
    dataset = ArrayDataset(None, probe.preprocessing, probe.input_shape, array=images)
    result = mine(probe, dataset, ["relu3"], k=20)
    from zfprobe.studies.mining.render import tile_bytes

    crop = streamed_layer(probe, result, "relu3").crop  # groups of 4 channels' tiles
    monkeypatch.setitem(memory.SHARES, "pictures", 4 * 20 * tile_bytes(crop) / memory.memory_budget())
    peaks = {}
    for n in (8, 40):
        chans = list(range(n))

        def streamed(n=n, chans=chans):
            pics = streamed_layer(probe, result, "relu3", channels=chans)
            save_mining(str(tmp_path / f"s{n}"), probe, result, {"relu3": pics}, "deconvnet", "identity", per_page=8,
                        channel_pngs=False)

        def held(n=n, chans=chans):
            pics = render_layer(probe, result, "relu3", channels=chans)
            save_mining(str(tmp_path / f"h{n}"), probe, result, {"relu3": pics}, "deconvnet", "identity", per_page=8,
                        channel_pngs=False)

        peaks[n] = _peak_while(streamed), _peak_while(held)
    held_growth = peaks[40][1] - peaks[8][1]
    assert held_growth > 1e6, peaks
    assert peaks[40][0] - peaks[8][0] < 0.2 * held_growth, peaks


def test_requests_that_cannot_fit_stop_before_the_run(tmp_path):
    from test_cli import assert_clean_error, run_cli

    out = tmp_path / "out"
    r = run_cli("mine", MODEL, SAMPLES, "-l", "relu3", "--top", "100", "--per-page", "1024", "--tile", "1024",
                "-q", "-o", out)
    assert_clean_error(r, "contact-sheet page", "--per-page", "--memory")
    assert not (out / ".mine-state.npz").exists()  # before mining
    # visualize streams its sheet a row at a time: --top 64 fits 16M; a batch that cannot fit is refused
    r = run_cli("visualize", MODEL, "-i", DIGIT, "-l", "relu3", "--top", "64", "--memory", "16M", "-o", out)
    assert r.returncode == 0, r.stderr
    from zfprobe.errors import OptionError
    from zfprobe.studies.visualize.compute import check_sheet_fits

    memory.set_memory("16M")
    try:
        with pytest.raises(OptionError, match="one batch of the pictures of 64 projections .*--memory"):
            check_sheet_fits(64, (512, 512))
        check_sheet_fits(64, (128, 128))
    finally:
        memory.set_memory(None)


# -- visualize --top N (zfprobe/studies/visualize/stream.py) ------------------------------------
def _decoded(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("top", [1, 4, 9])  # a sheet narrower than its legend, a partial row, full rows
def test_streamed_visualize_equals_the_held_projections(probe, tmp_path, monkeypatch, top):
    """The command line's streamed visualize (seeds projected, drawn and written in batches of
    one) writes the same bytes as a visualization holding every projection, and its sheet
    decodes to exactly the whole-array ``sheet()`` (contact_sheet over every cell at once)."""
    import numpy as np

    held = probe.visualize(DIGIT, "relu3", top=top)
    held.save(str(tmp_path / "held"), probe)
    monkeypatch.setitem(memory.SHARES, "pictures", 1e-6)  # batches of one seed
    streamed = probe.visualize(DIGIT, "relu3", top=top, stream=True)
    assert streamed.projections is None
    streamed.save(str(tmp_path / "streamed"), probe)
    want, got = digests(tmp_path / "held"), digests(tmp_path / "streamed")
    assert len(want) == top + 2 and got == want  # per-seed PNGs, contact sheet, input
    sheet = held.sheet()
    decoded = _decoded(tmp_path / "streamed" / "contact_sheet.png")
    assert decoded.shape == sheet.shape and np.array_equal(decoded, sheet)
    assert streamed.zero_flags() == held.zero_flags()


def test_streamed_visualize_memory_does_not_grow_with_top(probe, tmp_path):
    """--top 8 vs 48 at relu3: saving the held visualization (whole sheet array) grows by more
    than 5 MB; the streamed save (one batch of seeds and one row of the sheet) by less than a
    fifth of that."""
    peaks = {}
    for n in (8, 48):
        def streamed(n=n):
            probe.visualize(DIGIT, "relu3", top=n, stream=True).save(str(tmp_path / f"s{n}"), probe)

        def held(n=n):
            vis = probe.visualize(DIGIT, "relu3", top=n)
            vis.sheet()  # what the whole-array save drew
            vis.save(str(tmp_path / f"h{n}"), probe)

        peaks[n] = _peak_while(streamed), _peak_while(held)
    held_growth = peaks[48][1] - peaks[8][1]
    assert held_growth > 5e6, peaks
    assert peaks[48][0] - peaks[8][0] < 0.2 * held_growth, peaks
