"""Pictures and files of an occlusion result: maps overlaid on the input, with colour bars and a
class legend; the arrays (npz); the projection; the manifest. Written all or nothing."""
from __future__ import annotations

import io

import numpy as np

from zfprobe.io.pictures import figure_png, pyplot

MAP_FILES = {"activation": "occlusion_activation.png", "probability": "occlusion_probability.png",
             "label_map": "occlusion_label.png"}


def map_to_pixels(values: np.ndarray, rows, cols, size: int, height: int, width: int) -> np.ndarray:
    """Each pixel takes the value of the square whose centre is nearest (an [H, W] array)."""
    cy = np.asarray(rows) + (size - 1) / 2
    cx = np.asarray(cols) + (size - 1) / 2
    iy = np.abs(np.arange(height)[:, None] - cy[None, :]).argmin(1)
    ix = np.abs(np.arange(width)[:, None] - cx[None, :]).argmin(1)
    return values[iy[:, None], ix[None, :]]


def _class_name(result, k: int) -> str:
    names = result.class_names
    return f"{k}: {names[k]}" if names and 0 <= k < len(names) else str(k)


def _figure_png(result, kind: str) -> bytes:
    plt = pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch, Rectangle

    h, w = result.image.shape[:2]
    values = getattr(result, kind)
    fig, ax = plt.subplots(figsize=(4.6, 3.8), dpi=100)
    ax.imshow(result.image, interpolation="nearest")
    pix = map_to_pixels(values, result.rows, result.cols, result.size, h, w)
    if kind == "label_map":
        classes = sorted(int(v) for v in np.unique(values))
        palette = (list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
                   + list(plt.get_cmap("Set1").colors))
        colours = [palette[i % len(palette)] for i in range(len(classes))]
        index = np.searchsorted(classes, pix)
        cmap = ListedColormap(colours)
        ax.imshow(index, cmap=cmap, norm=BoundaryNorm(np.arange(len(classes) + 1) - 0.5, len(classes)),
                  alpha=0.55, interpolation="nearest")
        handles = [Patch(color=c, label=_class_name(result, k) + (" (target)" if k == result.label else ""))
                   for k, c in zip(classes, colours)]
        shown = handles[:12]
        if len(handles) > 12:
            shown.append(Patch(color="white", label=f"... {len(handles) - 12} more"))
        ax.legend(handles=shown, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
                  title="most probable class", title_fontsize=7)
        ax.set_title(f"(e) most probable class, square {result.size}px", fontsize=9)
    else:
        cmap = "jet"
        im = ax.imshow(pix, cmap=cmap, alpha=0.5, interpolation="nearest")
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize=7)
        if kind == "activation":
            bar.set_label(f"total activation of map {result.channel}", fontsize=7)
            ax.set_title(f"(b) {result.layer} map {result.channel} (unoccluded {result.base_activation:.3g})", fontsize=9)
        else:
            bar.set_label(f"p({_class_name(result, result.label)})", fontsize=7)
            ax.set_title(f"(d) p(class {_class_name(result, result.label)}), unoccluded {result.base_probability:.3f}",
                         fontsize=9)
    ax.add_patch(Rectangle((-0.5, -0.5), result.size, result.size, fill=False, edgecolor="white", linewidth=1.2,
                           linestyle="--"))
    ax.text(0.99, 0.01, f"square {result.size}px, stride {result.stride}", transform=ax.transAxes, fontsize=6,
            color="white", ha="right", va="bottom")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return figure_png(fig)


def projection_png(result) -> np.ndarray:
    from zfprobe.io.pictures import DEFAULT_PERCENTILE, projection_to_hwc, signed_to_uint8

    prep = result.preprocessing
    layout = prep.layout if prep else "NCHW"
    order = prep.channel_order if prep else "RGB"
    return signed_to_uint8(projection_to_hwc(result.projection, layout, order), DEFAULT_PERCENTILE)


def pictures(result) -> dict[str, bytes]:
    """File name -> PNG bytes of every picture of ``result``: the maps made, then the projection.
    ``save_result`` writes these; the notebook shows them (``OcclusionResult._repr_html_``)."""
    from zfprobe.io.inline import png_bytes

    out = {name: _figure_png(result, kind) for kind, name in MAP_FILES.items() if getattr(result, kind) is not None}
    if result.projection is not None:
        out["projection.png"] = png_bytes(projection_png(result))
    return out


def save_result(result, out_dir: str, probe=None) -> list[str]:
    from zfprobe.io.outputs import OutputStage

    with OutputStage(out_dir) as stage:
        files = [stage.write_png("input.png", result.image)]
        buf = io.BytesIO()
        np.savez_compressed(buf, **result.arrays())
        files.append(stage.write_bytes("occlusion.npz", buf.getvalue()))
        files += [stage.write_bytes(name, png) for name, png in pictures(result).items()]
        files.append("manifest.json")
        stage.write_json("manifest.json", manifest(result, probe, files))
        return stage.commit()


def manifest(result, probe=None, files=None) -> dict:
    from zfprobe.io.provenance import __version__
    from zfprobe.studies.occlusion.options import POSITION_NOTE, PROBABILITY_NOTE
    from zfprobe.io.provenance import model_manifest

    model = model_manifest(probe) if probe is not None else {}
    label_name = None
    if result.label is not None and result.class_names and result.label < len(result.class_names):
        label_name = result.class_names[result.label]
    return {
        "zfprobe_version": __version__,
        "command": "occlude",
        "model": model,
        "image": result.image_path,
        "layer": result.layer,
        "tensor": result.tensor,
        "channel": result.channel,
        "square": {"size": result.size, "stride": result.stride, "rows": result.rows, "cols": result.cols,
                   "positions": POSITION_NOTE, "fill": result.fill, "fill_model_value": result.fill_value},
        "label": result.label,
        "label_name": label_name,
        "label_source": result.label_source,
        "probabilities": (result.class_source + "; " + PROBABILITY_NOTE) if result.class_source else None,
        "unoccluded": {"activation": result.base_activation, "probability": result.base_probability,
                       "top1": result.base_label, "top5": result.predictions},
        "maps": {"activation": "activation" if result.activation is not None else None,
                 "probability": "probability" if result.probability is not None else None,
                 "label_map": "label_map" if result.label_map is not None else None,
                 "file": "occlusion.npz", "index": "[row position, column position]"},
        "projection": result.projection_note,
        "method": result.method,
        "incremental_layers": result.incremental_layers,
        "preprocessing": result.preprocessing.to_dict() if result.preprocessing is not None else None,
        "files": files or [],
        "timings_s": result.timings,
    }
