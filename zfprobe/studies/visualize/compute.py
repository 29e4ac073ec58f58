"""``visualize``: project chosen units of one image to pixel space, and save the pictures.

This is the paper's basic experiment (section 1): pick units (or whole feature maps) at a
layer, send each down the deconvnet alone, and look at the result beside the input.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from zfprobe.engine.rules import AUTO, LRN_IDENTITY
from zfprobe.io.display import DEFAULT_DEALIAS_PX  # noqa: F401 (the display default of every sheet)
from zfprobe.io.preprocess import Preprocessing
from zfprobe.io.provenance import file_sha256, model_manifest  # noqa: F401 (file_sha256: re-exported)
from zfprobe.io.pictures import (DEFAULT_PERCENTILE, contact_sheet, describe_mapping, projection_to_hwc,
                            signed_to_uint8, with_legend)
from zfprobe.engine.seeds import POSITION_RULES, Seed, SeedRequest, allowed_positions, seed_tensor
from zfprobe.studies.visualize.stream import SHEET_TILE  # px per contact-sheet cell (re-exported)

DISPLAY_MAPPING = ("each projection p is shown as 128 + 127 * clip(p / s, -1, 1) per pixel and colour channel, "
                   "s = max |p| of that projection, or (default) a percentile of its non-zero |p|: grey = 0, "
                   "brighter = positive")
FRAMES = ("rf", "full")
# Display only (docs/legibility.md, "Display treatments"): projections are shown low-passed at 2 px
# (a Gaussian of sigma 1 px removes the pixel-level checkerboard of strided reversals and keeps
# the detail; at the layer's own stride it leaves blobs), enlarged bilinearly, and beside a
# masked patch (the image crop weighted by the normalized |projection|).
RF_MARGIN = 0.25  # the crop extends the receptive field by this fraction of its size on each side


def crop_box(box, image_hw: tuple[int, int], margin: float = RF_MARGIN):
    """A nominal RF box ((y0, y1), (x0, x1)) widened by ``margin`` of its size on each side and
    clipped to the image (an RF larger than the image shows the whole image)."""
    out = []
    for (lo, hi), n in zip(box, image_hw):
        extra = int(round((hi - lo + 1) * margin))
        out.append((max(0, lo - extra), min(n - 1, hi + extra)))
    return tuple(out)


def draw_box(image: np.ndarray, box, colour=(255, 40, 40)) -> np.ndarray:
    """``image`` with the outline of ``box`` ((y0, y1), (x0, x1)) drawn on it (clipped)."""
    from PIL import Image, ImageDraw

    (y0, y1), (x0, x1) = box
    im = Image.fromarray(image)
    h, w = image.shape[:2]
    width = max(1, round(max(h, w) / 112))
    ImageDraw.Draw(im).rectangle((max(x0, 0), max(y0, 0), min(x1, w - 1), min(y1, h - 1)), outline=colour, width=width)
    return np.asarray(im)


def zero_projection_warning(names: list[str], total: int, rule: str, values: list[float] | None = None) -> str | None:
    """The one-line warning for projections that are exactly zero (shown as flat grey tiles)."""
    if not names:
        return None
    why = ("their seed value is <= 0 (the unit is not active)" if values and all(v <= 0 for v in values) else
           f"every path from them to the input is masked under the {rule} rule (rectifiers off or at their limits)")
    listed = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"{len(names)} of {total} projection(s) are exactly zero ({listed}): {why}; their tiles are flat grey"


SHEET_COLUMNS_PER_SEED = 3  # image view | projection | masked patch


def check_sheet_fits(n_seeds: int, image_hw: tuple[int, int] = (SHEET_TILE, SHEET_TILE)) -> None:
    """One clear line before any projection when one streamed batch of the pictures cannot fit
    the pictures share of the memory budget (zfprobe.io.memory): a row of the contact sheet and
    one seed's float projection with its display copies (``image_hw``: the input's size). The
    sheet is written a row at a time, so ``n_seeds`` itself is not bounded by memory."""
    from zfprobe.errors import OptionError
    from zfprobe.io.memory import budget_for, describe

    cells = min(9, 3 * max(1, n_seeds))
    row = 2 * 3 * (cells * (SHEET_TILE + 4) + 4) * (SHEET_TILE + 20)  # the row band and its widened copy
    need = row + 6 * 4 * 3 * int(image_hw[0]) * int(image_hw[1])
    if need > budget_for("pictures"):
        raise OptionError(f"one batch of the pictures of {n_seeds} projections ({image_hw[0]}x{image_hw[1]} input) takes "
                          f"{describe(need)}, more than the {describe(budget_for('pictures'))} for pictures; "
                          "raise --memory or use a smaller --input-size")


@dataclass
class Visualization:
    """The projections of one image's seeds at one layer, ready to save or inspect."""

    layer: str
    tensor: str
    rule: str
    lrn: str
    seeds: list[Seed]
    projections: np.ndarray
    image: np.ndarray              # display RGB uint8 [H, W, 3]
    preprocessing: Preprocessing | None
    image_path: str | None = None
    percentile: float | None = DEFAULT_PERCENTILE
    timings: dict = field(default_factory=dict)
    frame: str = "rf"
    boxes: list | None = None      # per seed: nominal RF box ((y0, y1), (x0, x1)), None for maps / global RFs
    rule_choice: dict | None = None  # how the rule was chosen and why (zfprobe.engine.rule_choice)
    positions: str = "inside"      # where the strongest unit may sit (zfprobe.engine.seeds.POSITION_RULES)
    predictions: list | None = None  # the model's top-5 classes for this image ([{class, name, probability}])
    dealias_px: float = DEFAULT_DEALIAS_PX  # display only: Gaussian low-pass, sigma = dealias_px / 2 (0: off)
    # streamed (``visualize(..., stream=True)``, the command line): ``projections`` is None and
    # ``source(start, stop)`` projects those seeds when ``save`` asks (zfprobe.studies.visualize.stream)
    source: object = None
    zeros: list | None = None      # per seed: projection exactly zero (filled by a streamed save)

    def zero_flags(self) -> list[bool]:
        """Per seed: is its projection exactly zero (nothing of the unit reaches the input)?"""
        if self.projections is None:
            if self.zeros is None:
                raise ValueError("a streamed visualization knows its zero projections only after save()")
            return list(self.zeros)
        return [not np.any(p) for p in self.projections]

    def zero_seeds(self) -> list[Seed]:
        """Seeds whose projection is exactly zero (nothing of the unit reaches the input)."""
        return [s for s, z in zip(self.seeds, self.zero_flags()) if z]

    def zero_warning(self) -> str | None:
        """One line explaining exactly-zero projections, or None when every projection shows something."""
        return zero_projection_warning([f"c{s.channel}" for s in self.zero_seeds()], len(self.seeds), self.rule,
                                       [s.value for s in self.zero_seeds()])

    def _hwc(self, p: np.ndarray) -> np.ndarray:
        prep = self.preprocessing
        return projection_to_hwc(p, prep.layout if prep else "NCHW", prep.channel_order if prep else "RGB")

    def _box(self, i: int):
        return self.boxes[i] if self.boxes else None

    def _display(self, p: np.ndarray) -> np.ndarray:
        """The projection as shown: [H, W, C] RGB, low-passed at ``dealias_px`` (display only)."""
        from zfprobe.io.display import dealias

        hwc = self._hwc(p)
        return dealias(hwc, self.dealias_px) if self.dealias_px and self.dealias_px > 1 else hwc

    def tiles(self) -> list[np.ndarray]:
        """One picture per seed: cropped at the unit's receptive field (with a margin) when the
        frame is 'rf' and the unit has one, else the whole frame (with the RF box drawn)."""
        return [self._tile(i, self._display(p)) for i, p in enumerate(self.projections)]

    def _tile(self, i: int, hwc: np.ndarray) -> np.ndarray:
        from zfprobe.studies.mining.compute import crop

        box = self._box(i)
        if box is not None and self.frame == "rf":
            return signed_to_uint8(crop(hwc, crop_box(box, hwc.shape[:2]), 0.0), self.percentile)
        tile = signed_to_uint8(hwc, self.percentile)
        return draw_box(tile, box) if box is not None else tile

    def image_tiles(self) -> list[np.ndarray]:
        """The input image under the same frame as each tile (crop, or whole with the RF box)."""
        return [self._view(i) for i in range(len(self.seeds))]

    def _view(self, i: int) -> np.ndarray:
        from zfprobe.studies.mining.compute import crop

        box = self._box(i)
        if box is None:
            return self.image
        if self.frame == "rf":
            return crop(self.image, crop_box(box, self.image.shape[:2]), 128).astype(np.uint8)
        return draw_box(self.image, box)

    def masked_tiles(self) -> list[np.ndarray]:
        """Per seed, the image view weighted by the normalized |projection| (grey where the unit
        does not look), the crop as in :meth:`tiles`."""
        return [self._masked(i, self._display(p), view) for i, (p, view) in enumerate(zip(self.projections, self.image_tiles()))]

    def _masked(self, i: int, hwc: np.ndarray, view: np.ndarray) -> np.ndarray:
        from zfprobe.io.display import masked_patch
        from zfprobe.studies.mining.compute import crop

        box = self._box(i)
        if box is not None and self.frame == "rf":
            return masked_patch(view, crop(hwc, crop_box(box, hwc.shape[:2]), 0.0))
        return masked_patch(self.image, hwc)

    def seed_cells(self, i: int, p: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        """Seed ``i``'s three contact-sheet cells (image view | projection | masked patch) and
        their captions, from its projection ``p``."""
        s, hwc, view = self.seeds[i], self._display(p), self._view(i)
        t = self._tile(i, hwc)
        where = " map" if s.position is None else (f" @{','.join(map(str, s.position))}" if s.position else "")
        return [view, t, self._masked(i, hwc, view)], [f"c{s.channel}{where} image", f"c{s.channel} {s.value:.3g}" + (
            " ZERO" if not t.std() else ""), f"c{s.channel} masked patch"]

    def sheet_title(self) -> str:
        view = "receptive field (+25% margin)" if self.frame == "rf" and self.boxes and any(self.boxes) else "full frame"
        return f"{self.layer} - {self.rule} - {view}: image | projection | masked patch"

    def sheet(self) -> np.ndarray:
        """The contact sheet: per seed the image view, the projection and the masked patch, with a legend."""
        if self.projections is None:
            raise ValueError("a streamed visualization holds no projections: save() writes its contact sheet")
        pictures, captions = [], []
        for i, p in enumerate(self.projections):
            cells, names = self.seed_cells(i, p)
            pictures += cells
            captions += names
        if not pictures:
            pictures, captions = [self.image], ["input"]
        sheet = contact_sheet(pictures, captions, columns=min(9, len(pictures)), tile_size=SHEET_TILE,
                              title=self.sheet_title(), smooth=True)
        return with_legend(sheet, self.percentile)

    def _repr_png_(self) -> bytes:
        """Jupyter: the contact sheet ``save()`` writes, drawn in memory (no file)."""
        from zfprobe.io.inline import png_bytes

        return png_bytes(self.sheet())

    @staticmethod
    def file_name(seed: Seed) -> str:
        where = "map" if seed.position is None else "_".join(str(p) for p in seed.position) or "unit"
        return f"projection_c{seed.channel:04d}_{where}.png"

    def save(self, out_dir: str, probe=None) -> list[str]:
        """Write per-seed PNGs, a contact sheet and manifest.json, all or nothing. The seeds are
        drawn and written a batch at a time (zfprobe.studies.visualize.stream), so memory does not
        grow with their number; held projections and streamed ones give the same bytes."""
        from zfprobe.io.outputs import OutputStage
        from zfprobe.studies.visualize.stream import write_pictures

        with OutputStage(out_dir) as stage:
            files = write_pictures(self, stage)
            files.append(stage.write_png("input.png", self.image))
            stage.write_json("manifest.json", self.manifest(probe, files + ["manifest.json"]))
            return stage.commit()

    def manifest(self, probe=None, files: list[str] | None = None) -> dict:
        from zfprobe.io.provenance import __version__

        model = {}
        if probe is not None:
            model = model_manifest(probe)
            shape = probe.graph.shape(self.tensor)
            node = probe.graph.producer(self.tensor)
            model["layer_op_type"] = node.op_type if node else "input"
            model["layer_shape"] = list(shape)
        return {
            "zfprobe_version": __version__,
            "command": "visualize",
            "model": model,
            "image": self.image_path,
            "layer": self.layer,
            "tensor": self.tensor,
            "rule": self.rule,
            "rule_choice": self.rule_choice,
            "predictions": self.predictions,
            "positions": {"rule": self.positions,
                          "meaning": ("each channel's strongest unit among those with >= 50% of their receptive field "
                                      "inside the image (a field larger than the image counts as image-sized)"
                                      if self.positions == "inside" else "each channel's strongest unit anywhere")},
            "lrn": self.lrn,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "display": {"mapping": describe_mapping(self.percentile), "percentile": self.percentile,
                        "frame": self.frame, "crop_margin": RF_MARGIN if self.frame == "rf" else None,
                        "dealias": (f"display only: Gaussian low-pass, sigma {self.dealias_px / 2:g} px" if self.dealias_px
                                    and self.dealias_px > 1 else None),
                        "sheet": "per seed: image view | projection | masked patch (image weighted by the normalized "
                                 "|projection|); small crops enlarged bilinearly"},
            "seeds": [dict(s.to_dict(), file=self.file_name(s), rf_box=self._box(i), zero=z)
                      for i, (s, z) in enumerate(zip(self.seeds, self.zero_flags()))],
            "files": files or [],
            "timings_s": self.timings,
        }


def visualize(probe, image, layer: str, channels: list[int] | None = None, top: int | None = None,
              mode: str = "unit", position: tuple[int, ...] | None = None, rule: str = AUTO,
              lrn: str = LRN_IDENTITY, percentile: float | None = DEFAULT_PERCENTILE,
              preprocessing: Preprocessing | None = None, frame: str = "rf", positions: str = "inside",
              dealias_px: float = DEFAULT_DEALIAS_PX, stream: bool = False) -> Visualization:
    """Project units of ``image`` (a path, or a preprocessed array [1, ...]) at ``layer``.

    Without channels or top, the 9 strongest channels are shown. One forward pass picks the
    seeds; one batched deconvnet run projects them all. ``rule="auto"`` picks guided backprop
    where no max-pool switch ties the deconvnet to the image (``result.rule_choice`` says why).
    ``positions="inside"`` picks each channel's strongest unit among those with at least half of
    their receptive field inside the image (``"any"``: anywhere, border units included).
    ``stream``: project nothing now; ``save`` projects, draws and writes the seeds a bounded batch
    at a time (the command line: memory does not grow with ``--top``); ``result.projections`` is
    then None.
    """
    from zfprobe.engine.deconv import DeconvOptions
    from zfprobe.errors import OptionError
    from zfprobe.engine.receptive_field import receptive_field

    choice = probe.choose_rule(layer, rule)
    rule = choice.rule
    DeconvOptions(rule, lrn)  # validate early, before any computation
    if frame not in FRAMES:
        raise OptionError(f"frame must be one of {', '.join(FRAMES)}, not '{frame}'")
    prep = preprocessing or probe.preprocessing
    t0 = time.perf_counter()
    display, tensor, image_path = probe.load_input(image, prep)
    if display is None:
        display = np.zeros((1, 1, 3), np.uint8)
    probe.deconv_program(layer, rule, lrn)  # surfaces non-invertible nodes before computing
    acts = probe.activations(tensor, layer)
    rf = receptive_field(probe.graph, probe.resolve(layer), prep.layout) if prep is not None else None
    allowed = allowed_positions(rf, tuple(acts.shape[2:]), positions) if rf is not None else None
    if rf is None and positions not in POSITION_RULES:
        allowed_positions(None, (), positions)  # the same error for a bad value
    seeds = SeedRequest(list(channels or []), top, mode, position, allowed).resolve(acts)

    def source(start: int, stop: int) -> np.ndarray:
        """The projections of seeds ``start:stop`` (their seed rows made only now)."""
        batch, images_of = seed_tensor(acts, seeds[start:stop])
        return probe.project(tensor, layer, batch, images_of, rule=rule, lrn=lrn)

    t1 = time.perf_counter()
    projections = None if stream else source(0, len(seeds))
    t2 = time.perf_counter()
    boxes = None
    if rf is not None:
        boxes = [None if s.position is None or rf.is_global else rf.nominal_box(tuple(s.position)) for s in seeds]
    return Visualization(layer, probe.resolve(layer), rule, lrn, seeds, projections, display, prep, image_path,
                         percentile, {"forward_and_seeds": round(t1 - t0, 4), "projection": round(t2 - t1, 4)},
                         frame, boxes, choice.to_dict(), positions, probe.predictions(tensor), dealias_px,
                         source=source if stream else None)
