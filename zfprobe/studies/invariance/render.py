"""Files of an invariance result: curves.csv, Fig. 5-style plots, example strips, summary.md and
the manifest, written all or nothing (rendering only; the numbers come from zfprobe.studies.invariance.compute)."""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from zfprobe.io import pictures as render
from zfprobe.io.images import to_display

NO_CLASS_NOTE = "the model has no class output, so only the feature distances are made (no class probability)"

BAND_NOTE = "thin lines: one per image; thick line: mean over images; band: mean +- one standard deviation"
MAX_LEGEND = 8
AXIS = {"px": "shift (px)", "x": "scale factor", "deg": "rotation (degrees)"}


def _panel(ax, amounts, values: np.ndarray, labels, colours, ylabel: str, title: str, unit: str, ylim=None) -> None:
    """One measure against the amount: a line per image, the mean and a +-1 std band."""
    many = len(values) > MAX_LEGEND
    for row, label, colour in zip(values, labels, colours):
        ax.plot(amounts, row, color="0.6" if many else colour, lw=0.7 if many else 1.1, alpha=0.7 if many else 0.9,
                label=None if many else label)
    if len(values) > 1:
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
        ax.fill_between(amounts, mean - std, mean + std, color="k", alpha=0.12, lw=0)
        ax.plot(amounts, mean, color="k", lw=2.2, label="mean")
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xlabel(AXIS.get(unit, unit), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ylim is not None:
        ax.set_ylim(*ylim)


def _short(name: str) -> str:
    base = os.path.basename(name)
    return base if len(base) <= 22 else base[:19] + "..."


def figure_png(result, raw: bool = False) -> bytes:
    """Rows: transforms; columns: each layer's distance (normalized, or raw), then p(true class)."""
    plt = render.pyplot()
    kinds = [t.kind for t in result.transforms]
    ncols = len(result.layers) + (1 if result.has_classes else 0)
    fig, axes = plt.subplots(len(kinds), ncols, figsize=(3.4 * ncols + 1.6, 2.7 * len(kinds)), dpi=100, squeeze=False)
    colours = list(plt.get_cmap("tab10").colors)
    colours = [colours[i % len(colours)] for i in range(len(result.images))]
    labels = [_short(n) for n in result.images]
    for r, t in enumerate(result.transforms):
        data = result.distance if raw else result.normalized
        for l, layer in enumerate(result.layers):
            what = "distance" if raw else "distance / |original|"
            _panel(axes[r, l], t.amounts, data[t.kind][:, :, l], labels, colours, what,
                   f"{t.kind}: {layer}", t.unit, None if raw else (0, None))
        if result.has_classes:
            _panel(axes[r, -1], t.amounts, result.probability[t.kind], labels, colours, "p(true class)",
                   f"{t.kind}: p(true class)", t.unit, (0, 1.02))
    handles, names = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=7, frameon=False)
    kind = "raw Euclidean distance" if raw else "Euclidean distance divided by the original's norm"
    fig.suptitle(f"Invariance of {len(result.images)} image(s): {kind}\n{BAND_NOTE}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return render.figure_png(fig)


def examples_png(result) -> bytes:
    """The first image under every amount of every transform (what the curves are about)."""
    plt = render.pyplot()
    kinds = [t.kind for t in result.transforms]
    per_row = max(len(t.amounts) for t in result.transforms)
    show = min(per_row, 13)
    fig, axes = plt.subplots(len(kinds), show, figsize=(1.1 * show, 1.35 * len(kinds)), dpi=72, squeeze=False)
    for r, t in enumerate(result.transforms):
        idx = np.unique(np.round(np.linspace(0, len(t.amounts) - 1, min(show, len(t.amounts)))).astype(int))
        for c in range(show):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(to_display(result.examples[t.kind][idx[c]]), interpolation="nearest")
                ax.set_title(f"{t.amounts[idx[c]]:g}{'' if t.unit == 'x' else ' '}{t.unit}", fontsize=9)
        axes[r, 0].text(-0.1, 0.5, t.kind, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=10)
    fig.suptitle(f"{_short(result.images[0])} as the model sees it (fill {result.fill_name}: "
                 f"pixel {', '.join(map(str, result.fill))})", fontsize=10)
    fig.tight_layout()
    return render.figure_png(fig)




def curves_csv(result) -> bytes:
    rows = result.rows()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["image"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def farthest(t) -> int:
    """Index of the amount farthest from the identity (for rotations: nearest to 180 degrees)."""
    a = np.asarray(t.amounts, np.float64)
    if t.kind == "rotate":
        a = np.mod(a, 360.0)
        return int(np.argmax(np.minimum(a, 360.0 - a)))
    return int(np.argmax(np.abs(a - (1.0 if t.kind == "scale" else 0.0))))


def summary_md(result) -> str:

    lines = [f"# Invariance: {len(result.images)} image(s), layers {', '.join(result.layers)}", ""]
    lines.append("Mean over images of the distance between the layer's features for the original and the "
                 "transformed image, divided by the original's norm (0 = unchanged), at the amount farthest "
                 "from the identity and the largest value of the mean curve" + (", and the mean probability of the true class" if result.has_classes else "")
                 + ".")
    lines.append("")
    head = ["transform", "amounts"] + [f"{l}: at farthest, max" for l in result.layers]
    if result.has_classes:
        head += ["p(true) original", "p(true) min over amounts", "still top-1"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in result.transforms:
        far = farthest(t)
        cells = [t.kind, f"{t.amounts[0]:g}..{t.amounts[-1]:g} {t.unit}"]
        for l in range(len(result.layers)):
            v = result.normalized[t.kind][:, :, l]
            cells.append(f"{np.nanmean(v[:, far]):.3f} ({t.amounts[far]:g} {t.unit}), {np.nanmax(np.nanmean(v, 0)):.3f}")
        if result.has_classes:
            p = result.probability[t.kind]
            hit = np.mean(result.predicted[t.kind] == np.asarray(result.labels)[:, None])
            cells += [f"{np.mean(result.base_probability):.3f}", f"{np.mean(p.min(1)):.3f}", f"{100 * hit:.0f}% of cases"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if not result.has_classes:
        lines += [f"Note: {NO_CLASS_NOTE}.", ""]
    else:
        lines += [f"True class: {result.label_source}; probabilities: {result.class_source}.", ""]
    lines.append("Curves: `curves.csv`; plots: `invariance.png` (normalized), `invariance_raw.png` (raw); "
                 "the transformed first image: `examples.png`.")
    return "\n".join(lines) + "\n"


def manifest(result, probe=None, files=None) -> dict:
    from zfprobe.io.provenance import __version__
    from zfprobe.io.provenance import model_manifest

    model = model_manifest(probe) if probe is not None else {}
    return {
        "zfprobe_version": __version__,
        "command": "invariance",
        "model": model,
        "images": result.images,
        "layers": [{"layer": l, "tensor": t} for l, t in zip(result.layers, result.tensors)],
        "transforms": [{"kind": t.kind, "unit": t.unit, "amounts": list(t.amounts)} for t in result.transforms],
        "transform_notes": ("applied to the image at the model's input size, before normalization, with Pillow "
                            "(bilinear); scale and rotate about the image centre; the output keeps the input size"),
        "fill": {"name": result.fill_name, "pixel": list(result.fill)},
        "distance": "Euclidean distance between the flattened layer outputs of the original and the transformed "
                    "image; normalized_distance divides it by the norm of the original's",
        "original_norms": {l: [float(v) for v in result.norms[:, i]] for i, l in enumerate(result.layers)},
        "classes": ({"source": result.class_source, "true_class": result.labels, "true_class_source": result.label_source,
                     "original_probability": [float(v) for v in result.base_probability],
                     "original_top1": [int(v) for v in result.base_predicted]}
                    if result.has_classes else None),
        "note": None if result.has_classes else NO_CLASS_NOTE,
        "plots": BAND_NOTE,
        "batch_size": result.batch_size,
        "preprocessing": result.preprocessing.to_dict() if result.preprocessing is not None else None,
        "files": files or [],
        "timings_s": result.timings,
    }


def save_result(result, out_dir: str, probe=None) -> list[str]:
    from zfprobe.io.outputs import OutputStage

    with OutputStage(out_dir) as stage:
        files = [stage.write_bytes("curves.csv", curves_csv(result)),
                 stage.write_bytes("invariance.png", figure_png(result)),
                 stage.write_bytes("invariance_raw.png", figure_png(result, raw=True)),
                 stage.write_bytes("examples.png", examples_png(result)),
                 stage.write_bytes("summary.md", summary_md(result).encode())]
        files.append("manifest.json")
        stage.write_json("manifest.json", manifest(result, probe, files))
        return stage.commit()
