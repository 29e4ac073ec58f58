"""Pictures and files of a mining run: Fig. 2-style contact sheets, per-channel PNGs, the index.

For each channel: a grid of the top-k projections (cropped at each unit's receptive field, each
shown with the signed grey mapping of :mod:`zfprobe.io.pictures`) beside a grid of the image patches
that produced them, strongest first in raster order, as in the paper's Fig. 2. Wide layers are
split into pages of ``per_page`` channels. Channels never active over the data (strongest value
<= 0) are drawn as a "dead" block instead of arbitrary patches; channels whose strongest value is
below ``WEAK_FRACTION`` of the layer's median channel maximum are flagged "weak".
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from zfprobe.engine.rules import AUTO, LRN_IDENTITY
from zfprobe.studies.mining.compute import STATE_FILE, MinedUnit, MiningResult, parse_channels, project_units
from zfprobe.io.display import DEFAULT_DEALIAS_PX, displayed_tile, masked_from_tile, within_image
from zfprobe.io.pictures import DEFAULT_PERCENTILE, describe_mapping, load_font, with_legend

GAP, BLOCK_GAP, CAPTION_H = 2, 10, 14
WEAK_FRACTION = 0.05


def channel_status(top) -> dict[int, str]:
    """Per channel of a mined layer: 'dead' (never active: no positive value on any image),
    'weak' (max below WEAK_FRACTION of the median positive channel max) or '' (normal)."""
    best = np.asarray(top.values[:, 0], dtype=np.float64)
    alive = best[np.isfinite(best) & (best > 0)]
    median = float(np.median(alive)) if alive.size else 0.0
    out = {}
    for c, v in enumerate(best):
        if not np.isfinite(v) or v <= 0:
            out[c] = "dead"
        elif v < WEAK_FRACTION * median:
            out[c] = "weak"
        else:
            out[c] = ""
    return out


@dataclass
class LayerPictures:
    layer: str
    tensor: str
    rule: str
    channels: list[int]
    rf_size: tuple[int, ...]
    rf_stride: tuple[int, ...]
    tiles: dict[int, list[tuple[MinedUnit, np.ndarray, np.ndarray]]] = field(default_factory=dict)  # c -> (unit, proj, patch)
    seconds: float = 0.0
    status: dict[int, str] = field(default_factory=dict)  # c -> 'dead' / 'weak' / ''
    percentile: float | None = DEFAULT_PERCENTILE
    k: int = 9                     # the run's top-k: grid slots per channel
    # streamed pictures (zfprobe.studies.mining.stream): no tiles held; ``source`` projects the
    # ``units(channels)`` when a page needs them, ``crop`` is the layer's crop size
    source: Callable | None = None
    units: Callable | None = None
    crop: tuple[int, int] | None = None
    rule_reason: str = ""  # why this rule (zfprobe.engine.rule_choice)
    # streamed pictures hold no tiles: the (channel, rank) of every tile drawn, and of the zero ones
    drawn: set = field(default_factory=set)
    drawn_zero: set = field(default_factory=set)
    # display only (docs/legibility.md): the tiles' de-aliasing, and a third grid of masked patches
    dealias_px: float | None = DEFAULT_DEALIAS_PX
    masked: bool = False

    def _repr_png_(self) -> bytes:
        """Jupyter: the layer's first sheet, as ``save_mining`` writes it (sheet_001.png)."""
        from zfprobe.io.inline import png_bytes

        sheet, _ = next(iter_layer_pages(self, self.k))  # only the first page is drawn
        return png_bytes(sheet)

    def zero_tiles(self) -> list[tuple[int, int]]:
        """(channel, rank) of the projection tiles that are one flat value: exactly-zero projections
        (for streamed pictures, of the tiles drawn so far)."""
        if self.source is not None:
            return sorted(self.drawn_zero)
        return [(c, u.rank) for c in self.channels for u, proj, _ in self.tiles.get(c, [])
                if proj.size and proj.min() == proj.max()]

    def zero_warning(self) -> str | None:
        from zfprobe.studies.visualize.compute import zero_projection_warning

        zero = self.zero_tiles()
        total = len(self.drawn) if self.source is not None else sum(len(t) for t in self.tiles.values())
        line = zero_projection_warning([f"c{c} rank {r + 1}" for c, r in zero], total, self.rule)
        return f"{self.layer}: {line} (labelled 'zero' on the sheets)" if line else None


def sheet_slots(result: MiningResult) -> int:
    """Grid slots per channel on the sheets: the run's top-k, or the images it read when fewer
    (``--top 1000`` over 20 images draws 20 slots, not 1,000 mostly empty ones)."""
    return max(1, min(result.k, result.images_seen - len(result.skipped)))


def units_to_project(result: MiningResult, layer: str, channels: list[int] | None = None) -> list[MinedUnit]:
    """The kept units of ``channels`` (default: all) that get a projection: dead channels get none."""
    top = result.layers[layer]
    chans = list(range(top.channels)) if channels is None else list(channels)
    status = channel_status(top)
    return top.units([c for c in chans if status[c] != "dead"])


def projection_tiles(probe, dataset, layer: str, units, rule: str, lrn: str, percentile: float | None,
                     image_chunk: int = 32, dealias_px: float | None = DEFAULT_DEALIAS_PX):
    """(unit, projection crop as displayed uint8, image patch) of each unit, projected by ``probe``.
    Display only: a field larger than the image is shown at most image-sized about the unit
    (zfprobe.io.display.within_image), the tile is de-aliased at ``dealias_px``
    (zfprobe.io.display.displayed_tile); ``project_units`` gives the exact crops."""
    from zfprobe.engine.receptive_field import receptive_field

    image_hw = receptive_field(probe.graph, probe.resolve(layer), dataset.prep.layout).image_size
    for up in project_units(probe, dataset, layer, units, rule, lrn, image_chunk=image_chunk):
        yield (up.unit, displayed_tile(within_image(up.projection_crop, image_hw), percentile, dealias_px),
               within_image(up.patch, image_hw))


def render_layer(probe, result: MiningResult, layer: str, rule: str = AUTO, lrn: str = LRN_IDENTITY,
                 channels: list[int] | None = None, percentile: float | None = DEFAULT_PERCENTILE,
                 image_chunk: int = 32, tiles=None, dealias_px: float | None = DEFAULT_DEALIAS_PX,
                 masked: bool = False) -> LayerPictures:
    """Project every kept unit of ``channels`` (default: all; dead channels are not projected)
    and keep uint8 crops. ``tiles``: the :func:`projection_tiles` of those units made elsewhere
    (the Ray engine projects on its workers); by default they are projected here. Display only:
    ``dealias_px`` (tiles low-passed), ``masked`` (a third grid of masked patches on the sheets)."""
    from zfprobe.engine.receptive_field import receptive_field

    top = result.layers[layer]
    chans = list(range(top.channels)) if channels is None else list(channels)
    rf = receptive_field(probe.graph, top.tensor, result.dataset.prep.layout)
    status = channel_status(top)
    choice = probe.choose_rule(layer, rule)
    rule = choice.rule
    pics = LayerPictures(layer, top.tensor, rule, chans, rf.size, rf.stride, {c: [] for c in chans},
                         status={c: status[c] for c in chans}, percentile=percentile, k=sheet_slots(result),
                         rule_reason=choice.reason, dealias_px=dealias_px, masked=masked)
    t0 = time.perf_counter()
    if tiles is None:
        tiles = projection_tiles(probe, result.dataset, layer, units_to_project(result, layer, chans), rule, lrn,
                                 percentile, image_chunk, dealias_px)
    for unit, proj, patch in tiles:
        pics.tiles[unit.channel].append((unit, proj, patch))
    for c in chans:
        pics.tiles[c].sort(key=lambda t: t[0].rank)
    pics.seconds = time.perf_counter() - t0
    return pics


def _tile_size(crop_hw: tuple[int, int], tile: int | None) -> int:
    if tile:
        return tile
    s = max(crop_hw)
    return int(min(128, max(64, s * max(1, int(np.ceil(64 / max(s, 1)))))))


def _resize(img: np.ndarray, size: int, smooth: bool = True) -> np.ndarray:
    """A tile at ``size`` x ``size`` px: enlarged bilinearly (``smooth``, the default: a 30 px crop
    shown at 64-128 px reads as an image, not as blocks) or by nearest neighbour; reduced bilinearly."""
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img
    im = Image.fromarray(img)
    method = Image.NEAREST if max(img.shape[:2]) <= size and not smooth else Image.BILINEAR
    return np.asarray(im.resize((size, size), method))


def _grid_cols(k: int) -> int:
    """Columns of a channel's k-tile grid (shared by the grid and the labels drawn on it)."""
    return int(np.ceil(np.sqrt(k)))


def _grid(images: list[np.ndarray], k: int, size: int, smooth: bool = True) -> np.ndarray:
    cols = _grid_cols(k)
    rows = int(np.ceil(k / cols))
    out = np.full((rows * size + (rows - 1) * GAP, cols * size + (cols - 1) * GAP, 3), 255, np.uint8)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        y, x = r * (size + GAP), c * (size + GAP)
        if i < len(images):
            out[y: y + size, x: x + size] = _resize(images[i], size, smooth)
        else:
            out[y: y + size, x: x + size] = 235  # an empty slot (fewer images than k)
    return out


def channel_block(channel: int, tiles, k: int, size: int, caption: bool = True, status: str = "",
                  masked: bool = False, smooth: bool = True) -> np.ndarray:
    """[projections grid | patches grid (| masked patches grid)] of one channel, with a caption
    line above; a dead channel gets an empty block marked 'dead'. ``smooth``: enlarge bilinearly."""
    from PIL import Image, ImageDraw

    if status == "dead":
        tiles = []
    grids = [_grid([t[1] for t in tiles], k, size, smooth), _grid([t[2] for t in tiles], k, size, smooth)]
    if masked:
        grids.append(_grid([masked_from_tile(t[2], t[1]) for t in tiles], k, size, smooth))
    left = grids[0]
    gw = left.shape[1]
    h, w = left.shape[0], len(grids) * gw + (len(grids) - 1) * (BLOCK_GAP // 2)
    top = CAPTION_H if caption else 0
    block = np.full((h + top, w, 3), 255, np.uint8)
    for i, g in enumerate(grids):
        x = i * (gw + BLOCK_GAP // 2)
        block[top:, x: x + gw] = g
    im = Image.fromarray(block)
    draw = ImageDraw.Draw(im)
    if caption:
        best = f" max {tiles[0][0].value:.3g}" if tiles else " (no images)"
        if status == "dead":
            best = " DEAD: never active on the data"
        elif status == "weak":
            best += " WEAK"
        draw.text((1, 1), f"c{channel}{best}", fill=(200, 0, 0) if status else "black", font=load_font(10))
        if status == "dead":
            draw.text((4, top + left.shape[0] // 2 - 6), "dead", fill=(200, 0, 0), font=load_font(14))
    # A projection tile of one flat value is a projection of exactly zero (e.g. of a unit held at a
    # ReLU6 ceiling, whose local derivative is 0 under every rule): say so, so that a reader does
    # not take the empty grey tile for a rendering fault.
    cols = _grid_cols(k)
    for i, (_, projection, _) in enumerate(tiles):
        if projection.size and projection.min() == projection.max():
            r, c = divmod(i, cols)
            draw.text((c * (size + GAP) + 3, top + r * (size + GAP) + 3), "zero", fill=(200, 0, 0), font=load_font(10))
    return np.asarray(im)


# -- streamed pictures (see zfprobe.studies.mining.stream) ------------------------------------
def tile_bytes(crop: tuple[int, int] | None) -> int:
    """Bytes of one unit's pictures in flight: the uint8 projection crop and image patch."""
    h, w = crop or (8, 8)
    return 2 * 3 * h * w


def channel_group(crop, k: int, budget: int | None = None) -> int:
    """Channels whose ``k`` units' crops fit the pictures share of the memory budget at once."""
    from zfprobe.io.memory import budget_for

    budget = budget_for("pictures") if budget is None else budget
    return int(max(1, budget // max(1, k * tile_bytes(crop))))


def channel_tiles(pics, channels: Sequence[int], k: int) -> Iterator[tuple[int, list]]:
    """(channel, its tiles strongest first) for each of ``channels`` in order, projected in
    groups that fit the budget (or read from ``pics.tiles`` when it holds them)."""
    source = getattr(pics, "source", None)
    if source is None:
        for c in channels:
            yield c, pics.tiles[c]
        return
    group = channel_group(pics.crop, k)
    for start in range(0, len(channels), group):
        part = list(channels[start:start + group])
        t0 = time.perf_counter()
        tiles: dict[int, list] = {c: [] for c in part}
        for unit, proj, patch in source(pics.units(part)):
            tiles[unit.channel].append((unit, proj, patch))
            pics.drawn.add((unit.channel, unit.rank))
            if proj.size and proj.min() == proj.max():
                pics.drawn_zero.add((unit.channel, unit.rank))
        pics.seconds += time.perf_counter() - t0
        for c in part:
            yield c, sorted(tiles.pop(c), key=lambda t: t[0].rank)


def layer_crop(pics) -> tuple[int, int]:
    """The crop size of a layer's tiles ((8, 8) with none), held or streamed alike."""
    if getattr(pics, "source", None) is not None:
        return pics.crop or (8, 8)
    return next((t[1].shape[:2] for ts in pics.tiles.values() for t in ts), (8, 8))


def layer_pages(pics: LayerPictures, k: int, per_page: int = 64, tile: int | None = None, title: str = "") -> list[np.ndarray]:
    return [sheet for sheet, _ in iter_layer_pages(pics, k, per_page, tile, title)]


def iter_layer_pages(pics: LayerPictures, k: int, per_page: int = 64, tile: int | None = None, title: str = "",
                     sheets: bool = True, channel_size: int | None = None):
    """(contact sheet or None, {channel: its block at ``channel_size`` px}) page by page: each
    page's tiles are fetched (projected, for streamed pictures), drawn and dropped before the next."""
    size = _tile_size(layer_crop(pics), tile)
    chans = pics.channels
    n_pages = max(1, int(np.ceil(len(chans) / per_page)))
    for p in range(n_pages):
        page_chans = chans[p * per_page: (p + 1) * per_page]
        blocks, singles = [], {}
        for c, tiles in channel_tiles(pics, page_chans, k):
            status = pics.status.get(c, "")
            masked = getattr(pics, "masked", False)
            if sheets:
                blocks.append(channel_block(c, tiles, k, size, status=status, masked=masked))
            if channel_size:
                singles[c] = channel_block(c, tiles, k, channel_size, status=status, masked=masked)
        yield (_sheet_page(pics, blocks, k, p, n_pages, title) if sheets else None), singles


def _sheet_page(pics: LayerPictures, blocks: list[np.ndarray], k: int, p: int, n_pages: int, title: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    cols = int(np.ceil(np.sqrt(len(blocks)))) if blocks else 1
    rows = int(np.ceil(len(blocks) / cols)) if blocks else 1
    bh, bw = blocks[0].shape[:2] if blocks else (10, 10)
    head = 24
    sheet = np.full((head + rows * (bh + BLOCK_GAP) + BLOCK_GAP, cols * (bw + BLOCK_GAP) + BLOCK_GAP, 3), 255, np.uint8)
    for i, b in enumerate(blocks):
        r, c = divmod(i, cols)
        y, x = head + BLOCK_GAP + r * (bh + BLOCK_GAP), BLOCK_GAP + c * (bw + BLOCK_GAP)
        sheet[y: y + bh, x: x + bw] = b
    im = Image.fromarray(sheet)
    grids = "projections | patches" + (" | masked patches" if getattr(pics, "masked", False) else "")
    text = f"{title or pics.layer}  ({pics.rule}; RF {'x'.join(map(str, pics.rf_size))}; top {k}: {grids})"
    if n_pages > 1:
        text += f"  page {p + 1}/{n_pages}"
    ImageDraw.Draw(im).text((BLOCK_GAP, 5), text, fill="black", font=load_font(13))
    return with_legend(np.asarray(im), pics.percentile)


def safe_name(layer: str) -> str:
    """The folder name of a layer: reversible, so two layers never share one (blk/relu, blk_relu)."""
    from zfprobe.io.outputs import safe_file_name

    return safe_file_name(layer)


def index_rows(result: MiningResult, layer: str, channels: list[int], rf=None) -> list[dict]:
    rows = []
    top = result.layers[layer]
    for c in channels:
        for u in top.entries(c):
            box = rf.box(u.position) if rf is not None else None
            rows.append({"layer": layer, "channel": c, "rank": u.rank, "image_index": u.image,
                         "image": result.dataset.name(u.image), "position": "x".join(map(str, u.position)) or "-",
                         "value": f"{u.value:.7g}",
                         "box": ";".join(f"{a}-{b}" for a, b in box) if box else "-"})
    return rows


def save_mining(out_dir: str, probe, result: MiningResult, pictures: dict[str, LayerPictures], rule: str, lrn: str,
                per_page: int = 64, tile: int | None = None, channel_pngs: bool = True, sheets: bool = True,
                extra: dict | None = None) -> list[str]:
    """Write sheets, per-channel PNGs, index.csv and manifest.json into ``out_dir``, all or nothing.
    Files of an earlier run listed in its manifest and not rewritten now are removed (by OutputStage)."""
    from zfprobe.io.provenance import __version__
    from zfprobe.io.outputs import OutputStage
    from zfprobe.engine.receptive_field import receptive_field
    from zfprobe.io.provenance import model_manifest
    from zfprobe.studies.visualize.compute import DISPLAY_MAPPING

    with OutputStage(out_dir) as stage:
        files: list[str] = []
        all_rows: list[dict] = []
        layers_meta = {}
        for layer, pics in pictures.items():
            d = safe_name(layer)
            k = sheet_slots(result)
            sheet_files, chan_files = [], []
            if sheets or channel_pngs:  # page by page: a page's pictures are written, then dropped
                size = max(_tile_size(layer_crop(pics), tile), 64) if channel_pngs else None
                # (no enumerate: its cached result tuple would keep the last page alive)
                for page, blocks in iter_layer_pages(pics, k, per_page, tile, sheets=sheets, channel_size=size):
                    if page is not None:
                        sheet_files.append(stage.write_png(f"{d}/sheet_{len(sheet_files) + 1:03d}.png", page))
                    chan_files += [stage.write_png(f"{d}/channels/c{c:04d}.png", b) for c, b in blocks.items()]
                    del page, blocks  # before the next page is drawn
            files += sheet_files + chan_files
            rf = receptive_field(probe.graph, pics.tensor, result.dataset.prep.layout)
            rows = index_rows(result, layer, pics.channels, rf)
            all_rows += rows
            top = result.layers[layer]
            status = channel_status(top)
            layers_meta[layer] = {"tensor": pics.tensor, "shape": list(top.shape), "channels_shown": pics.channels,
                                  "receptive_field": {"size": list(rf.size), "stride": list(rf.stride), "exact": rf.exact},
                                  "sheets": sheet_files, "projection_seconds": round(pics.seconds, 3),
                                  "dead_channels": [c for c in pics.channels if status[c] == "dead"],
                                  "weak_channels": [c for c in pics.channels if status[c] == "weak"],
                                  "display_percentile": pics.percentile,
                                  "display_dealias_px": pics.dealias_px if pics.dealias_px and pics.dealias_px > 1 else 0,
                                  "masked_patches": bool(pics.masked),
                                  "rule": pics.rule, "rule_reason": pics.rule_reason,
                                  "zero_projections": [list(t) for t in pics.zero_tiles()]}
        buf = io.StringIO()
        fields = ["layer", "channel", "rank", "image_index", "image", "position", "value", "box"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(all_rows)
        files.append(stage.write_bytes("index.csv", buf.getvalue().encode()))
        files.append("manifest.json")
        manifest = {
            "zfprobe_version": __version__,
            "command": "mine",
            "model": model_manifest(probe),
            "dataset": result.dataset.describe(),
            "summary": result.summary(),
            "skipped": [{"index": i, "name": result.dataset.name(i), "reason": r} for i, r in result.skipped],
            "rule": rule, "lrn": lrn, "k": result.k,
            "ranking": "per channel: each image's strongest position; value descending, then image index ascending",
            "position": getattr(result, "position", "inside"),
            "preprocessing": result.dataset.prep.to_dict(),
            "display": {"mapping": describe_mapping(next(iter(pictures.values())).percentile) if pictures else DISPLAY_MAPPING,
                        "crops": "nominal receptive field box; grey beyond the image border",
                        "display_only": "tiles de-aliased (Gaussian low-pass, sigma dealias_px / 2) and enlarged "
                                        "bilinearly; masked patch = patch weighted by the tile's normalized |p|",
                        "dead": "strongest value over the data <= 0 (never active); not projected",
                        "weak": f"strongest value below {WEAK_FRACTION:g} x the layer's median channel maximum"},
            "layers": layers_meta,
            "index": "index.csv (box: exact receptive field y0-y1;x0-x1, clipped to the image)",
            "state": STATE_FILE,
            "files": files,
            **(extra or {}),
        }
        stage.write_json("manifest.json", manifest)
        final = stage.commit()
    return final


__all__ = ["render_layer", "iter_layer_pages", "units_to_project", "projection_tiles", "layer_pages", "channel_block", "save_mining", "parse_channels", "LayerPictures"]
