"""``visualize``'s pictures in bounded batches: the seeds are projected, drawn and written a batch
at a time, and the contact sheet is encoded to PNG one row of cells at a time, so memory holds
one batch of projections and one row of the sheet however many seeds ``--top`` asks for
(EfficientNet-Lite0, whole arrays: --top 8 340 MB, --top 32 562 MB; docs/scale.md).

The sheet's rows are drawn by the same :func:`~zfprobe.io.pictures.contact_sheet` as the whole
sheet (one call per row of cells, and one for the title band) and stacked in the same places, so
the streamed file decodes to exactly ``Visualization.sheet()``; both held and streamed
visualizations are written by :func:`write_pictures`, so their files are the same bytes.
"""
from __future__ import annotations

import struct
import time
import zlib
from typing import Iterator

import numpy as np

from zfprobe.io.pictures import contact_sheet, legend, signed_to_uint8

SHEET_TILE = 160       # px per contact-sheet cell
SHEET_COLUMNS = 9      # cells per sheet row (three seeds), as Visualization.sheet draws them
CAPTION_H, PAD, TITLE_H = 16, 4, 22  # contact_sheet's layout (pixels)
PNG_LEVEL = 6          # zlib level of the sheet (PIL's default)


class PngRows:
    """A PNG (8-bit RGB) written a band of rows at a time: the header first, then each band
    filtered ('Up') and deflated into IDAT chunks as it comes; ``close`` checks the row count.

    Written here because neither library fits: Pillow encodes only a whole image held in memory,
    and pypng, which streams rows, writes them unfiltered (the bundled demo sheet: 237 KB with
    pypng, 128 KB with Pillow, 113 KB here). Decoded by Pillow in the tests."""

    def __init__(self, f, width: int, height: int):
        self.f, self.width, self.height, self.rows = f, int(width), int(height), 0
        self.z = zlib.compressobj(PNG_LEVEL)
        self.prev = np.zeros(self.width * 3, np.uint8)
        f.write(b"\x89PNG\r\n\x1a\n")
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0))

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    def write(self, band: np.ndarray) -> None:
        band = np.ascontiguousarray(band, np.uint8)
        if band.ndim != 3 or band.shape[1:] != (self.width, 3):
            raise ValueError(f"band of shape {band.shape}, expected [rows, {self.width}, 3]")
        flat = band.reshape(len(band), -1)
        above = np.concatenate([self.prev[None], flat[:-1]])
        filtered = np.empty((len(band), flat.shape[1] + 1), np.uint8)
        filtered[:, 0] = 2  # filter type Up: each byte minus the byte above (mod 256)
        np.subtract(flat, above, out=filtered[:, 1:])
        self.prev = flat[-1].copy()
        self.rows += len(band)
        out = self.z.compress(filtered.tobytes())
        if out:
            self._chunk(b"IDAT", out)

    def close(self) -> None:
        if self.rows != self.height:
            raise ValueError(f"PNG has {self.rows} of its {self.height} rows")
        self._chunk(b"IDAT", self.z.flush())
        self._chunk(b"IEND", b"")


def seed_batch(vis) -> int:
    """Seeds per batch: their float projections and display copies fit the pictures share of the
    memory budget, and at most 16 (the sheet gains nothing from more; probe.project batches the
    reverse pass itself)."""
    from zfprobe.io.memory import budget_for

    per_seed = 6 * 4 * int(np.prod(vis.image.shape))  # projection, its HWC / low-passed copies, tiles
    return int(max(1, min(16, budget_for("pictures") // max(1, per_seed))))


def _projections(vis, batch: int) -> Iterator[tuple[int, np.ndarray]]:
    """(seed index, projection) of every seed: from ``vis.projections`` or its source, a batch at a time."""
    for start in range(0, len(vis.seeds), batch):
        stop = min(start + batch, len(vis.seeds))
        if vis.projections is not None:
            part = vis.projections[start:stop]
        else:
            t = time.perf_counter()
            part = vis.source(start, stop)
            vis.timings["projection"] = round(vis.timings.get("projection", 0.0) + time.perf_counter() - t, 4)
        for j, p in enumerate(part):
            yield start + j, p
        del part


def write_pictures(vis, stage, batch: int | None = None) -> list[str]:
    """Write each seed's full-frame PNG and ``contact_sheet.png`` of ``vis`` into ``stage``, a
    batch of seeds at a time; returns the files written (the sheet last). A streamed ``vis``
    learns which projections are zero (``vis.zeros``)."""
    from zfprobe.io.memory import release_freed_memory

    n = len(vis.seeds)
    columns = min(SHEET_COLUMNS, 3 * n) if n else 1
    row_h = SHEET_TILE + CAPTION_H + PAD
    sheet_w = columns * (SHEET_TILE + PAD) + PAD
    bar = legend(sheet_w, vis.percentile, height=34)
    width = max(sheet_w, bar.shape[1])
    rows = -(-max(1, 3 * n) // columns)
    height = TITLE_H + PAD + rows * row_h + bar.shape[0]

    def widen(band: np.ndarray) -> np.ndarray:
        if band.shape[1] == width:
            return band
        return np.concatenate([band, np.full((band.shape[0], width - band.shape[1], 3), 255, np.uint8)], axis=1)

    def row_band(cells: list, captions: list) -> np.ndarray:
        strip = contact_sheet(cells, captions, columns=columns, tile_size=SHEET_TILE, smooth=True)
        return widen(strip[PAD:PAD + row_h])  # the row as it sits in the whole sheet

    files, zeros = [], []
    with stage._writing(), open(stage.path("contact_sheet.png"), "wb") as f:  # OSError -> one-line OutputError
        png = PngRows(f, width, height)
        png.write(widen(contact_sheet([], [], columns=columns, tile_size=SHEET_TILE, title=vis.sheet_title(), smooth=True)))
        cells, captions = [], []
        if not n:
            cells, captions = [vis.image], ["input"]
        for i, p in _projections(vis, batch or seed_batch(vis)):
            files.append(stage.write_png(vis.file_name(vis.seeds[i]), signed_to_uint8(vis._display(p), vis.percentile)))
            zeros.append(not np.any(p))
            more, names = vis.seed_cells(i, p)
            cells += more
            captions += names
            if len(cells) == columns:
                png.write(row_band(cells, captions))
                cells, captions = [], []
                release_freed_memory()
        if cells:
            png.write(row_band(cells, captions))
        png.write(bar if bar.shape[1] == width else widen(bar))
        png.close()
    if vis.projections is None:
        vis.zeros = zeros
    return files + ["contact_sheet.png"]
