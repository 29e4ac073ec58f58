"""The layer pages' channel thumbnails, streamed: projected a group of channels at a time
(zfprobe.studies.mining.stream), each channel's block encoded as PNG and written through the
output stage at once, so memory does not grow with channels x k. The PNGs are also kept in the
report cache (keyed by model hash, data, layer, k, images mined, display and tile size), so a
rerun copies them instead of projecting again."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import numpy as np

from zfprobe.io.pictures import DEFAULT_PERCENTILE

CACHE_VERSION = "thumbs-v3"  # v2: the layer's default rule is part of the key; v3: de-aliased, bilinear, --position, image-sized crops


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)  # optimize=True costs ~5x the time
    return buf.getvalue()


def cache_folder(cache: str, sha: str | None, layer: str, result, tile: int, rule: str = "") -> str:
    key = hashlib.sha256(json.dumps([sha, layer, result.dataset.fingerprint(), result.k, result.images_seen,
                                     DEFAULT_PERCENTILE, tile, rule, getattr(result, "position", "inside"),
                                     CACHE_VERSION], sort_keys=True, default=str).encode())
    return os.path.join(cache, f"thumbs-{key.hexdigest()[:24]}")


def write_thumbnails(stage, probe, result, layer: str, folder: str, cache: str, sha: str | None, tile: int,
                     channels=None, progress=None, keep: dict | None = None):
    """Write ``img/<folder>/cNNNN.png`` (the block of projections | patches at ``tile`` px, no
    caption) for ``channels`` of ``layer`` (default: all) into ``stage``; returns the layer's
    tile-less LayerPictures. ``progress(n)`` is told of the channels done. ``keep``: a dict whose
    keys are channels whose tiles (unit, uint8 projection crop, patch) the caller wants back (the
    unit pages reuse them instead of projecting those units again); filled only when projected."""
    from zfprobe.studies.mining.render import channel_block, channel_tiles, sheet_slots
    from zfprobe.studies.mining.stream import streamed_layer

    pics = streamed_layer(probe, result, layer, channels=channels)
    saved = cache_folder(cache, sha, layer, result, tile, pics.rule)
    names = {c: f"c{c:04d}.png" for c in pics.channels}
    done = progress or (lambda n: None)
    if all(os.path.isfile(os.path.join(saved, n)) for n in names.values()):
        for n in names.values():
            with open(os.path.join(saved, n), "rb") as f:
                stage.write_bytes(f"img/{folder}/{n}", f.read())
            done(1)
        return pics
    staging = f"{saved}.{os.getpid()}.tmp"
    os.makedirs(staging, exist_ok=True)
    try:
        k = sheet_slots(result)  # as the mining sheets: no more slots than images read (4 images: a 2x2 grid)
        for c, tiles in channel_tiles(pics, pics.channels, k):
            if keep is not None and c in keep:
                keep[c] = tiles
            data = png_bytes(channel_block(c, tiles, k, tile, caption=False, status=pics.status.get(c, "")))
            stage.write_bytes(f"img/{folder}/{names[c]}", data)
            with open(os.path.join(staging, names[c]), "wb") as f:
                f.write(data)
            done(1)
        os.makedirs(saved, exist_ok=True)
        for n in os.listdir(staging):  # channels shown on another build of the same key stay
            os.replace(os.path.join(staging, n), os.path.join(saved, n))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pics


def strongest_channels(top, n: int | None) -> list[int]:
    """The ``n`` channels of a mined layer with the largest mean of their top-k values (empty
    slots count 0), in channel order; every channel when ``n`` is None or not smaller."""
    if n is None or n >= top.channels:
        return list(range(top.channels))
    values = np.asarray(top.values, np.float64)
    mean = np.where(np.isfinite(values), values, 0.0).mean(axis=1)
    return sorted(int(c) for c in np.argsort(-mean, kind="stable")[:n])


class CachedFiles:
    """Output files kept in a cache folder too: a rerun with the same key copies them into the
    stage instead of computing them (the report's unit pages)."""

    def __init__(self, stage, folder: str):
        self.stage, self.folder = stage, folder

    def complete(self, rels) -> bool:
        return all(os.path.isfile(os.path.join(self.folder, rel)) for rel in rels)

    def copy(self, rel: str) -> None:
        with open(os.path.join(self.folder, rel), "rb") as f:
            self.stage.write_bytes(rel, f.read())

    def write(self, rel: str, data: bytes) -> None:
        from zfprobe.io.outputs import write_file_atomically

        self.stage.write_bytes(rel, data)
        os.makedirs(os.path.dirname(os.path.join(self.folder, rel)), exist_ok=True)
        write_file_atomically(os.path.join(self.folder, rel), data)


def unit_cache_folder(cache: str, sha: str | None, layer: str, result, extra) -> str:
    # units-v4: occlusion maps of dataset samples drawn over the colour photo (v2), position rule and display (v3)
    key = hashlib.sha256(json.dumps([sha, layer, result.dataset.fingerprint(), result.k, result.images_seen,
                                     DEFAULT_PERCENTILE, extra, getattr(result, "position", "inside"), "units-v4"],
                                    sort_keys=True, default=str).encode())
    return os.path.join(cache, f"units-{key.hexdigest()[:24]}")
