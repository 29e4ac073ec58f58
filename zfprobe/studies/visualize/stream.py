"""``zfprobe visualize`` written in bounded batches: the seeds are projected a batch at a time,
each batch becomes its full-frame PNGs (written through the output stage at once) and its two
contact-sheet tiles per seed (already at the sheet's tile size), and the float projections are
dropped before the next batch. The pictures are the ones :meth:`Visualization.save` writes; only
:func:`~zfprobe.studies.visualize.compute.visualize` (the API) keeps ``projections`` whole."""
from __future__ import annotations

import time

import numpy as np

from zfprobe.engine.rules import DECONVNET, LRN_IDENTITY
from zfprobe.io.pictures import DEFAULT_PERCENTILE

SHEET_TILE = 160  # px per contact-sheet tile (contact_sheet's tile_size)


def sheet_tile(picture: np.ndarray, size: int = SHEET_TILE) -> np.ndarray:
    """``picture`` resized as contact_sheet resizes it (so the sheet pastes it unchanged)."""
    from PIL import Image

    method = Image.NEAREST if picture.shape[0] < size else Image.BILINEAR
    return np.asarray(Image.fromarray(picture).resize((size, size), method))


def check_sheet_fits(n_seeds: int) -> None:
    """One clear line before any projection when the contact sheet of ``n_seeds`` seeds (two
    tiles each) cannot fit the pictures share of the memory budget."""
    from zfprobe.errors import OptionError
    from zfprobe.io.memory import budget_for, describe

    need = 2 * 2 * n_seeds * 3 * (SHEET_TILE + 20) ** 2  # the tiles and the sheet they are pasted into
    if need > budget_for("pictures"):
        raise OptionError(f"the contact sheet of {n_seeds} projections takes {describe(need)}, more than the "
                          f"{describe(budget_for('pictures'))} for pictures; lower --top or raise --memory")


def save_visualization(probe, image, layer: str, out_dir: str, channels: list[int] | None = None,
                       top: int | None = None, mode: str = "unit", position: tuple[int, ...] | None = None,
                       rule: str = DECONVNET, lrn: str = LRN_IDENTITY, percentile: float | None = DEFAULT_PERCENTILE,
                       preprocessing=None, frame: str = "rf", batch: int | None = None):
    """Project the seeds of :func:`~zfprobe.studies.visualize.compute.visualize` and write what
    :meth:`Visualization.save` writes, ``batch`` seeds at a time (default: as many as one reverse
    batch holds). Returns (files, number of seeds, seconds)."""
    from zfprobe.engine.deconv import DeconvOptions
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.engine.seeds import SeedRequest, seed_tensor
    from zfprobe.errors import OptionError
    from zfprobe.io.outputs import OutputStage
    from zfprobe.io.pictures import contact_sheet, signed_to_uint8, with_legend
    from zfprobe.studies.visualize.compute import FRAMES, Visualization

    DeconvOptions(rule, lrn)
    if frame not in FRAMES:
        raise OptionError(f"frame must be one of {', '.join(FRAMES)}, not '{frame}'")
    prep = preprocessing or probe.preprocessing
    t0 = time.perf_counter()
    display, tensor, image_path = probe.load_input(image, prep)
    if display is None:
        display = np.zeros((1, 1, 3), np.uint8)
    probe.deconv_program(layer, rule, lrn)
    acts = probe.activations(tensor, layer)
    seeds = SeedRequest(list(channels or []), top, mode, position).resolve(acts)
    check_sheet_fits(len(seeds))
    boxes = None
    if prep is not None:
        rf = receptive_field(probe.graph, probe.resolve(layer), prep.layout)
        boxes = [None if s.position is None or rf.is_global else rf.nominal_box(tuple(s.position)) for s in seeds]
    batch = batch or probe.seed_batch_size(probe.resolve(layer), 1)
    t1 = time.perf_counter()

    def view(part: slice, projections: np.ndarray) -> Visualization:
        return Visualization(layer, probe.resolve(layer), rule, lrn, seeds[part], projections, display, prep, image_path,
                             percentile, {}, frame, boxes[part] if boxes else None)

    pictures, captions, files = [], [], []
    with OutputStage(out_dir) as stage:
        for start in range(0, len(seeds), batch):
            part = slice(start, start + batch)
            rows, images_of = seed_tensor(acts, seeds[part])
            vis = view(part, probe.project(tensor, layer, rows, images_of, rule=rule, lrn=lrn))
            del rows
            for s, p in zip(vis.seeds, vis.projections):  # full frame, per seed
                files.append(stage.write_png(vis.file_name(s), signed_to_uint8(vis._hwc(p), percentile)))
            for s, t, v in zip(vis.seeds, vis.tiles(), vis.image_tiles()):
                where = " map" if s.position is None else (f" @{','.join(map(str, s.position))}" if s.position else "")
                pictures += [sheet_tile(v), sheet_tile(t)]
                captions += [f"c{s.channel}{where} image", f"c{s.channel} {s.value:.3g}"]
            del vis
        t2 = time.perf_counter()
        whole = view(slice(None), np.zeros((0,), np.float32))
        if not pictures:
            pictures, captions = [display], ["input"]
        shown = "receptive field (+25% margin)" if frame == "rf" and boxes and any(boxes) else "full frame"
        sheet = contact_sheet(pictures, captions, columns=min(6, len(pictures)), tile_size=SHEET_TILE,
                              title=f"{layer} - {rule} - {shown}: image | projection")
        files.append(stage.write_png("contact_sheet.png", with_legend(sheet, percentile)))
        files.append(stage.write_png("input.png", display))
        whole.timings = {"forward_and_seeds": round(t1 - t0, 4), "projection": round(t2 - t1, 4)}  # with the pictures
        stage.write_json("manifest.json", whole.manifest(probe, files + ["manifest.json"]))
        final = stage.commit()
    return final, len(seeds), time.perf_counter() - t0
