"""Files of a correspondence result: table.csv / table.md (Table 1), the images with their part
squares, a bar chart, summary.md and the manifest, written all or nothing."""
from __future__ import annotations

import csv
import io
import os

import numpy as np

from zfprobe.io.pictures import figure_png, pyplot

MAX_IMAGES = 24




def parts_png(result) -> bytes:
    """The images as the model sees them, each part's square in its colour; the random squares
    (the same in every image) dashed on the first."""
    from matplotlib.patches import Patch, Rectangle

    plt = pyplot()
    n = min(len(result.images), MAX_IMAGES)
    cols = min(n, 8)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 2.0 * rows + 0.5), dpi=110, squeeze=False)
    colours = list(plt.get_cmap("tab10").colors)
    for k in range(rows * cols):
        ax = axes[k // cols, k % cols]
        ax.axis("off")
        if k >= n:
            continue
        ax.imshow(result.display[k], interpolation="nearest")
        for j, p in enumerate(result.parts):
            r, c = result.squares[p][k]
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), result.size, result.size, fill=False,
                                   edgecolor=colours[j % 10], linewidth=1.4))
        if k == 0:
            for r, c in result.random_squares:
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), result.size, result.size, fill=False, edgecolor="white",
                                       linewidth=0.8, linestyle="--"))
        ax.set_title(os.path.basename(result.images[k])[:18], fontsize=6)
    handles = [Patch(edgecolor=colours[j % 10], facecolor="none", label=p) for j, p in enumerate(result.parts)]
    if result.random_squares:
        handles.append(Patch(edgecolor="0.4", facecolor="none", linestyle="--",
                             label=f"random ({len(result.random_squares)}, first image)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    more = f" (first {n} of {len(result.images)} shown)" if n < len(result.images) else ""
    fig.suptitle(f"occluded parts: {result.size}px squares, fill {result.fill}{more}", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return figure_png(fig)


def delta_png(result) -> bytes:
    """Delta per layer: one bar per part, the random baseline as mean with its standard deviation."""
    plt = pyplot()
    layers = result.layers
    groups = list(result.parts) + (["random"] if len(result.random_delta) else [])
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(layers) * max(1, len(groups) / 3), 3.2), dpi=100)
    colours = list(plt.get_cmap("tab10").colors)
    x = np.arange(len(layers))
    for j, g in enumerate(groups):
        if g == "random":
            vals, err, colour = result.random_mean(), result.random_std(), "0.6"
        else:
            vals, err, colour = np.array([result.delta[g][l] for l in layers]), None, colours[j % 10]
        label = f"random (mean +- std of {len(result.random_delta)})" if g == "random" else g
        ax.bar(x + (j - (len(groups) - 1) / 2) * width, vals, width, yerr=err, color=colour, label=label, capsize=3)
    ax.set_xticks(x, layers, fontsize=8)
    ax.set_ylabel("Delta (fraction of sign disagreements)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"correspondence over {len(result.images)} images (lower = more consistent)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def table_csv(result) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["part", "layer", "delta", "std", "draws"], lineterminator="\n")
    writer.writeheader()
    for row in result.table():
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def table_md(result) -> str:
    """Table 1's layout: a row per part, a column per layer, then the random baseline."""
    head = ["occlusion"] + [f"Delta {l}" for l in result.layers]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(result.layers) + "|"]
    for p in result.parts:
        lines.append("| " + " | ".join([p] + [f"{result.delta[p][l]:.4f}" for l in result.layers]) + " |")
    if len(result.random_delta):
        mean, std = result.random_mean(), result.random_std()
        cells = [f"{m:.4f} +- {s:.4f}" if np.isfinite(s) else f"{m:.4f}" for m, s in zip(mean, std)]
        lines.append("| " + " | ".join([f"random (mean +- std of {len(result.random_delta)})"] + cells) + " |")
    return "\n".join(lines) + "\n"


def summary_md(result) -> str:
    lines = [f"# Correspondence: {len(result.images)} images, parts {', '.join(result.parts)}", "",
             f"Each part was covered by a {result.size}px square ({result.fill}) in every image; Delta is the "
             "fraction of (image pair, feature) entries whose change signs differ (0 = every image changes the "
             "same way). Lower than random means the network ties that part to consistent features.", "",
             table_md(result)]
    if len(result.random_delta) > 1:
        mean, std = result.random_mean(), result.random_std()
        for k, l in enumerate(result.layers):
            below = [p for p in result.parts if result.delta[p][l] < mean[k] - std[k]]
            above = [p for p in result.parts if result.delta[p][l] > mean[k] + std[k]]
            within = [p for p in result.parts if p not in below and p not in above]
            text = []
            if below:
                text.append(f"below random by more than one std: {', '.join(below)}")
            if within:
                text.append(f"within one std of random: {', '.join(within)}")
            if above:
                text.append(f"above random: {', '.join(above)}")
            lines.append(f"- {l}: " + "; ".join(text) + ".")
        lines.append("")
    lines.append("Files: `table.csv`, `table.md`, `parts.png` (the squares), `delta.png` (bar chart).")
    return "\n".join(lines) + "\n"


def manifest(result, probe=None, files=None) -> dict:
    from zfprobe.io.provenance import __version__
    from zfprobe.io.provenance import model_manifest

    model = model_manifest(probe) if probe is not None else {}
    return {
        "zfprobe_version": __version__,
        "command": "correspondence",
        "model": model,
        "images": result.images,
        "layers": [{"layer": l, "tensor": t} for l, t in zip(result.layers, result.tensors)],
        "parts": result.parts,
        "square": {"size": result.size, "fill": result.fill, "placement": "centred on the part's box",
                   "top_left_row_col": {p: [list(s) for s in sq] for p, sq in result.squares.items()}},
        "random": {"draws": len(result.random_squares), "seed": result.seed,
                   "top_left_row_col": [list(s) for s in result.random_squares],
                   "delta": {l: [float(v) for v in result.random_delta[:, k]] for k, l in enumerate(result.layers)}},
        "delta": result.delta,
        "measure": ("Delta = sum over ordered pairs i != j of Hamming(sign(eps_i), sign(eps_j)) / (n (n - 1) D), "
                    "eps = features(original) - features(occluded), ternary signs (an exact 0 is its own value)"),
        "preprocessing": result.preprocessing.to_dict() if result.preprocessing is not None else None,
        "files": files or [],
        "timings_s": result.timings,
    }


def save_result(result, out_dir: str, probe=None) -> list[str]:
    from zfprobe.io.outputs import OutputStage

    with OutputStage(out_dir) as stage:
        files = [stage.write_bytes("table.csv", table_csv(result)),
                 stage.write_bytes("table.md", table_md(result).encode()),
                 stage.write_bytes("parts.png", parts_png(result)),
                 stage.write_bytes("delta.png", delta_png(result)),
                 stage.write_bytes("summary.md", summary_md(result).encode())]
        files.append("manifest.json")
        stage.write_json("manifest.json", manifest(result, probe, files))
        return stage.commit()
