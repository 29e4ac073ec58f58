"""The result type of an occlusion run: the maps of one image and how they were made.
Saving and showing it is rendering's job (:mod:`zfprobe.studies.occlusion.render`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class OcclusionResult:
    """The maps of one image (arrays indexed [row position, column position])."""

    layer: str
    tensor: str
    channel: int | None                  # the strongest feature map (None without a layer)
    size: int
    stride: int
    rows: list[int]                      # top-left corners of the square
    cols: list[int]
    fill: str
    fill_value: list[float]
    activation: np.ndarray | None        # (b) total activation of the channel
    probability: np.ndarray | None       # (d) probability of ``label``
    label_map: np.ndarray | None         # (e) most probable class
    label: int | None
    label_source: str | None             # "given" or "top-1 of the unoccluded image"
    base_activation: float | None
    base_probability: float | None
    base_label: int | None
    class_source: str | None
    class_names: list[str] | None
    projection: np.ndarray | None        # (c) [*input] in model layout
    projection_note: str
    image: np.ndarray                    # display RGB uint8 [H, W, 3]
    method: str
    incremental_layers: list[str]
    preprocessing: object = None
    image_path: str | None = None
    timings: dict = field(default_factory=dict)
    predictions: list | None = None      # top-5 classes of the unoccluded image ([{class, name, probability}])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"rows": np.asarray(self.rows), "cols": np.asarray(self.cols),
               "centre_y": np.asarray(self.rows) + (self.size - 1) / 2,
               "centre_x": np.asarray(self.cols) + (self.size - 1) / 2}
        if self.activation is not None:
            out["activation"] = self.activation
        if self.probability is not None:
            out["probability"] = self.probability
        if self.label_map is not None:
            out["label_map"] = self.label_map
        if self.projection is not None:
            out["projection"] = self.projection
        return out

    def save(self, out_dir: str, probe=None) -> list[str]:
        """Write the input, maps, projection, occlusion.npz and manifest.json, all or nothing."""
        from zfprobe.studies.occlusion.render import save_result

        return save_result(self, out_dir, probe)

    def _repr_html_(self) -> str:
        """Jupyter: the pictures ``save()`` writes (maps, projection), drawn in memory."""
        from zfprobe.io.inline import block, gallery, img_tag
        from zfprobe.studies.occlusion.render import pictures

        where = f"{self.layer} map {self.channel}" if self.channel is not None else "class output only"
        label = "" if self.label is None else f", class {self.label}"
        if self.label is not None and self.class_names and self.label < len(self.class_names):
            label += f" ({self.class_names[self.label]})"
        title = f"occlusion: {where}{label}; square {self.size}px, stride {self.stride}"
        return block(title, gallery(*(img_tag(png, name) for name, png in pictures(self).items())))
