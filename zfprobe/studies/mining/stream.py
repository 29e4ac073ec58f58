"""Pictures of a mining run in bounded batches: projections become uint8 tiles a few channels at a
time, are drawn into their blocks and pages, written, and dropped before the next channels.

:func:`streamed_layer` gives a :class:`~zfprobe.studies.mining.render.LayerPictures` without its
tiles: :func:`channel_tiles` projects them on demand, in groups of channels whose uint8 crops fit
the "pictures" share of the memory budget (zfprobe.io.memory). The output stage consumes a layer
page by page (:func:`page_tiles`), so memory holds one page's blocks and one group's crops however
many channels x k a run has. A LayerPictures that already holds its tiles (``render_layer``, the
API) is paged from memory the same way, with the same pictures.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from zfprobe.engine.rules import AUTO, LRN_IDENTITY
from zfprobe.errors import OptionError
from zfprobe.io.pictures import DEFAULT_PERCENTILE

# (units) -> iterable of (unit, projection crop uint8, image patch uint8): the projection stage
TileSource = Callable[[list], Iterator]


def crop_shape(rf, units) -> tuple[int, int] | None:
    """(h, w) of every crop of a layer (one nominal receptive-field size per layer), or None
    without units."""
    for u in units:
        box = rf.nominal_box(tuple(u.position))
        return tuple(hi - lo + 1 for lo, hi in box)
    return None


def streamed_layer(probe, result, layer: str, rule: str = AUTO, lrn: str = LRN_IDENTITY,
                   channels: Sequence[int] | None = None, percentile: float | None = DEFAULT_PERCENTILE,
                   image_chunk: int = 32, source: TileSource | None = None, dealias_px: float | None = None,
                   masked: bool = False):
    """The LayerPictures of ``channels`` (default: all) with no tiles held: ``pics.source``
    projects a list of units when the output stage asks for them (default: this process's
    :func:`~zfprobe.studies.mining.render.projection_tiles`; the Ray engine hands in its own).
    Display only: ``dealias_px`` (None: the default) and ``masked`` (a third grid of masked patches)."""
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.studies.mining.render import LayerPictures, sheet_slots, channel_status, projection_tiles, units_to_project

    choice = probe.choose_rule(layer, rule)  # 'auto' becomes the layer's rule, with its reason
    rule = choice.rule
    top = result.layers[layer]
    chans = list(range(top.channels)) if channels is None else list(channels)
    rf = receptive_field(probe.graph, top.tensor, result.dataset.prep.layout)
    status = channel_status(top)
    from zfprobe.io.display import DEFAULT_DEALIAS_PX

    dealias_px = DEFAULT_DEALIAS_PX if dealias_px is None else dealias_px
    if source is None:
        def source(units):
            return projection_tiles(probe, result.dataset, layer, units, rule, lrn, percentile, image_chunk, dealias_px)
    live = [c for c in chans if status[c] != "dead"][:1]
    return LayerPictures(layer, top.tensor, rule, chans, rf.size, rf.stride, {}, status={c: status[c] for c in chans},
                         percentile=percentile, k=sheet_slots(result), rule_reason=choice.reason, source=source, units=lambda cs: units_to_project(result, layer, cs),
                         crop=crop_shape(rf, units_to_project(result, layer, live)), dealias_px=dealias_px, masked=masked)


def page_bytes(k: int, per_page: int, size: int) -> int:
    """Bytes of one contact-sheet page's channel blocks (two grids of k tiles of ``size`` px)."""
    from zfprobe.studies.mining.render import BLOCK_GAP, CAPTION_H, GAP, _grid_cols

    cols = _grid_cols(k)
    rows = int(np.ceil(k / cols))
    h, w = rows * size + (rows - 1) * GAP + CAPTION_H, 2 * (cols * size + (cols - 1) * GAP) + BLOCK_GAP // 2
    return 2 * per_page * 3 * h * w  # the blocks and the page they are pasted into


def check_layer_pictures(probe, layer: str, k: int, per_page: int, tile: int | None, channels: int, layout: str) -> None:
    """:func:`check_pictures_fit` for the sheets of ``layer`` (``channels`` shown), before mining:
    the tile size follows from the layer's receptive field as the sheets will choose it."""
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.studies.mining.render import _tile_size

    tensor = probe.resolve(layer)
    rf = receptive_field(probe.graph, tensor, layout)
    box = rf.nominal_box((0,) * (len(probe.graph.shape(tensor)) - 2))
    check_pictures_fit(k, min(per_page, channels), _tile_size(tuple(hi - lo + 1 for lo, hi in box), tile))


def check_pictures_fit(k: int, per_page: int, size: int) -> None:
    """One clear line before the run when a page of channel blocks cannot fit the pictures
    share of the memory budget: what it would take and which options bound it."""
    from zfprobe.io.memory import budget_for, describe

    need = page_bytes(k, per_page, size)
    if need > budget_for("pictures"):
        raise OptionError(f"one contact-sheet page of {per_page} channels x top {k} at {size} px tiles takes "
                          f"{describe(need)}, more than the {describe(budget_for('pictures'))} for pictures; "
                          "lower --per-page, --top or --tile, or raise --memory")
