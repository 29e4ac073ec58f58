"""``visualize``: project chosen units of one image to pixel space, and save the pictures.

This is the paper's basic experiment (section 1): pick units (or whole feature maps) at a
layer, send each down the deconvnet alone, and look at the result beside the input.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np

from zfprobe.preprocess import Preprocessing
from zfprobe.render import contact_sheet, projection_to_hwc, signed_to_uint8
from zfprobe.seeds import Seed, SeedRequest, seed_tensor

DISPLAY_MAPPING = ("each projection p is shown as 128 + 127 * clip(p / s, -1, 1) per pixel and colour channel, "
                   "s = max |p| of that projection (or its given percentile): grey = 0, brighter = positive")


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
    percentile: float | None = None
    timings: dict = field(default_factory=dict)

    def tiles(self) -> list[np.ndarray]:
        prep = self.preprocessing
        layout = prep.layout if prep else "NCHW"
        order = prep.channel_order if prep else "RGB"
        return [signed_to_uint8(projection_to_hwc(p, layout, order), self.percentile) for p in self.projections]

    @staticmethod
    def file_name(seed: Seed) -> str:
        where = "map" if seed.position is None else "_".join(str(p) for p in seed.position) or "unit"
        return f"projection_c{seed.channel:04d}_{where}.png"

    def save(self, out_dir: str, probe=None) -> list[str]:
        """Write per-seed PNGs, a contact sheet and manifest.json, all or nothing."""
        from zfprobe.outputs import OutputStage

        tiles = self.tiles()
        captions = ["input"] + [f"c{s.channel}" + (f" @{s.position}" if s.position else " map") + f" {s.value:.3g}" for s in self.seeds]
        sheet = contact_sheet([self.image] + tiles, captions, title=f"{self.layer} - {self.rule}")
        with OutputStage(out_dir) as stage:
            files = [stage.write_png(self.file_name(s), t) for s, t in zip(self.seeds, tiles)]
            files.append(stage.write_png("contact_sheet.png", sheet))
            files.append(stage.write_png("input.png", self.image))
            stage.write_json("manifest.json", self.manifest(probe, files + ["manifest.json"]))
            return stage.commit()

    def manifest(self, probe=None, files: list[str] | None = None) -> dict:
        from zfprobe import __version__

        model = {}
        if probe is not None:
            model = {"path": probe.source, "sha256": file_sha256(probe.source) if probe.source and os.path.isfile(probe.source) else None,
                     "input": probe.input_name, "input_shape": list(probe.input_shape),
                     "backend": getattr(probe.backend, "name", type(probe.backend).__name__),
                     "device": getattr(probe.backend, "device", "cpu")}
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
            "lrn": self.lrn,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "display": {"mapping": DISPLAY_MAPPING, "percentile": self.percentile},
            "seeds": [dict(s.to_dict(), file=self.file_name(s)) for s in self.seeds],
            "files": files or [],
            "timings_s": self.timings,
        }


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def visualize(probe, image, layer: str, channels: list[int] | None = None, top: int | None = None,
              mode: str = "unit", position: tuple[int, ...] | None = None, rule: str = "deconvnet",
              lrn: str = "identity", percentile: float | None = None,
              preprocessing: Preprocessing | None = None) -> Visualization:
    """Project units of ``image`` (a path, or a preprocessed array [1, ...]) at ``layer``.

    Without channels or top, the 9 strongest channels are shown. One forward pass picks the
    seeds; one batched deconvnet run projects them all.
    """
    from zfprobe.deconv import DeconvOptions

    DeconvOptions(rule, lrn)  # validate early, before any computation
    prep = preprocessing or probe.preprocessing
    t0 = time.perf_counter()
    display, tensor, image_path = probe.load_input(image, prep)
    if display is None:
        display = np.zeros((1, 1, 3), np.uint8)
    probe.deconv_program(layer, rule, lrn)  # surfaces non-invertible nodes before computing
    acts = probe.activations(tensor, layer)
    seeds = SeedRequest(list(channels or []), top, mode, position).resolve(acts)
    batch, images_of = seed_tensor(acts, seeds)
    t1 = time.perf_counter()
    projections = probe.project(tensor, layer, batch, images_of, rule=rule, lrn=lrn)
    t2 = time.perf_counter()
    return Visualization(layer, probe.resolve(layer), rule, lrn, seeds, projections, display, prep, image_path,
                         percentile, {"forward_and_seeds": round(t1 - t0, 4), "projection": round(t2 - t1, 4)})
