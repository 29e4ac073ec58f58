"""Writing a sanity run: similarity curves (as Adebayo et al., Fig. 2), projection strips, CSV
tables, a plain-words summary and the manifest, published all or nothing."""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np

from zfprobe.io.pictures import figure_png, projection_to_hwc, pyplot, signed_to_uint8
from zfprobe.studies.sanity.similarity import METRICS

if TYPE_CHECKING:  # annotations only: SanityResult shows itself through this module
    from zfprobe.studies.sanity.compute import SanityResult

METRIC_TITLES = {"spearman_abs": "Spearman rank corr. |p|", "spearman_signed": "Spearman rank corr. p (signed)",
                 "ssim": "SSIM of |p|", "hog": "HOG similarity"}
RULE_COLOURS = {"deconvnet": "#1f77b4", "gradient": "#d62728", "guided": "#2ca02c"}
# The display of projections in the strips (as `visualize`: 99th percentile of |p|, grey is 0).
STRIP_PERCENTILE = 99.0


def _csv_text(rows: list[dict]) -> bytes:
    if not rows:
        return b""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue().encode()


def curves_figure(result: SanityResult) -> bytes:
    """One row per mode, one panel per measure: the mean similarity to the trained model against
    the randomized layers, one line per rule with a +-1 std band."""
    plt = pyplot()

    summary = result.summary()
    fig, axes = plt.subplots(len(result.modes), len(METRICS), figsize=(4.2 * len(METRICS), 4.2 * len(result.modes)),
                             squeeze=False, constrained_layout=True)
    for r, mode in enumerate(result.modes):
        labels = [s.short or s.label for s in result.steps[mode]]
        for c, metric in enumerate(METRICS):
            ax = axes[r][c]
            for rule in result.rules:
                entries = [s for s in summary if s["mode"] == mode and s["rule"] == rule]
                mean = np.array([e[f"{metric}_mean"] for e in entries])
                std = np.array([e[f"{metric}_std"] for e in entries])
                xs = np.arange(len(entries))
                colour = RULE_COLOURS.get(rule)
                ax.plot(xs, mean, "o-", color=colour, label=rule, lw=1.8, ms=4)
                ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_ylim(-0.5 if metric == "spearman_signed" else -0.1, 1.05)
            ax.set_xticks(np.arange(len(labels)))
            ax.set_xticklabels(labels, rotation=55, ha="right", fontsize=7)
            ax.set_xlabel("layers randomized, top down" if mode == "cascade" else "the one layer randomized", fontsize=8)
            ax.set_title(f"{METRIC_TITLES[metric]}\n{mode} randomization", fontsize=9)
            if c == 0:
                ax.set_ylabel("similarity to trained")
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Sanity checks at {result.layer}: similarity of projections to the trained model's "
                 f"(mean ± std over {len(result.seeds)} units), init '{result.init}'", fontsize=10)
    return figure_png(fig, tight=False)


def strip_figure(result: SanityResult, mode: str) -> bytes:
    """Rows are rules, columns the steps: the first unit's projection as the weights are
    randomized (inside its receptive field, with the same crop of the input on the left)."""
    plt = pyplot()

    steps = result.steps[mode]
    meta = result.seeds[0]
    box = meta.get("receptive_field")
    crop = (slice(box[0][0], box[0][1] + 1), slice(box[1][0], box[1][1] + 1)) if box else (slice(None), slice(None))
    cols = len(steps) + 1
    fig, axes = plt.subplots(len(result.rules), cols, figsize=(1.5 * cols, 1.75 * len(result.rules) + 0.6),
                             squeeze=False, constrained_layout=True)
    shown = result.display[meta["image_index"]]
    for r, rule in enumerate(result.rules):
        ax = axes[r][0]
        if shown is not None:
            ax.imshow(shown[crop], cmap="gray" if shown.ndim == 2 else None)
        ax.set_title("input" if r == 0 else "", fontsize=8)
        ax.set_ylabel(rule, fontsize=9)
        for k, step in enumerate(steps):
            hwc = projection_to_hwc(result.strips[mode][rule][k], result.layout)[crop]
            ax = axes[r][k + 1]
            ax.imshow(signed_to_uint8(hwc, STRIP_PERCENTILE), interpolation="nearest")
            if r == 0:
                ax.set_title(step.short or step.label, fontsize=7, rotation=30 if len(step.short or step.label) > 10 else 0)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    where = f"channel {meta['channel']} at {meta['position']}" if meta["position"] else f"unit {meta['channel']} (class score)"
    fig.suptitle(f"{mode} randomization, {result.layer} {where} "
                 f"(grey = 0; scale: {STRIP_PERCENTILE:g}th percentile of |p| per tile)", fontsize=9)
    return figure_png(fig, tight=False)


def summary_markdown(result: SanityResult) -> str:
    lines = [f"# Sanity checks: {result.layer}", "",
             f"{len(result.seeds)} units ({result.units}) over {len(result.images)} image(s); "
             f"{len(result.layers)} weight layers at or below the layer, re-initialized '{result.init}' "
             f"with seed {result.seed}. Similarity of each projection to the trained model's, measured inside "
             "the unit's receptive field (see docs/sanity.md).", "", "## Verdict", ""]
    lines += [f"- {text}" for text in result.verdicts().values()]
    summary = result.summary()
    for mode in result.modes:
        lines += ["", f"## {mode.capitalize()} randomization (mean Spearman rank correlation of |p|; SSIM)", "",
                  "| randomized | " + " | ".join(result.rules) + " |", "|---|" + "---|" * len(result.rules)]
        for step in result.steps[mode]:
            cells = []
            for rule in result.rules:
                e = next(s for s in summary if s["mode"] == mode and s["step"] == step.index and s["rule"] == rule)
                cells.append(f"{e['spearman_abs_mean']:.2f} ± {e['spearman_abs_std']:.2f}; {e['ssim_mean']:.2f}")
            lines.append(f"| {step.label} | " + " | ".join(cells) + " |")
    lines += ["", "## Unit selectivity (Mahendran & Vedaldi)", "",
              "Mean pairwise similarity between the projections of different channels seeded at the same "
              "position of one image (high: the picture says little about which unit it shows).", "",
              "| rule | Spearman |p| | SSIM |", "|---|---|---|"]
    for rule in result.rules:
        sel = [r for r in result.selectivity if r["rule"] == rule]
        lines.append(f"| {rule} | {np.nanmean([r['spearman_abs'] for r in sel]):.2f} | "
                     f"{np.nanmean([r['ssim'] for r in sel]):.2f} |")
    return "\n".join(lines) + "\n"


def manifest(result: SanityResult, probe, files: list[str]) -> dict:
    from zfprobe.io.provenance import __version__
    from zfprobe.io.provenance import model_manifest

    return {
        "zfprobe_version": __version__,
        "command": "sanity",
        "model": model_manifest(probe),
        "layer": result.layer, "tensor": result.tensor, "rules": list(result.rules), "modes": list(result.modes),
        "init": result.init, "seed": result.seed, "units": result.units,
        "weight_layers": [{"node": l.node, "op_type": l.op_type, "weight": l.weight, "bias": l.bias}
                          for l in result.layers],
        "steps": {m: [{"index": s.index, "label": s.label, "randomized": list(s.randomized)} for s in steps]
                  for m, steps in result.steps.items()},
        "seeds": result.seeds, "images": result.images,
        "measures": {"spearman_abs": "Spearman rank correlation of |sum over colour channels of p|",
                     "spearman_signed": "Spearman rank correlation of the signed channel sum",
                     "ssim": "skimage structural_similarity of |p| scaled to [0, 1]",
                     "hog": "Pearson correlation of skimage HOG descriptors of |p| scaled to [0, 1]",
                     "region": "each unit's receptive-field box"},
        "verdicts": result.verdicts(),
        "preprocessing": probe.preprocessing.to_dict() if probe.preprocessing else None,
        "files": files, "timings_s": result.timings,
    }


def save(result: SanityResult, out_dir: str, probe) -> list[str]:
    """Write every output of a sanity run into ``out_dir``, all or nothing."""
    from zfprobe.io.outputs import OutputStage

    with OutputStage(out_dir) as stage:
        files = [stage.write_bytes("sanity.csv", _csv_text(result.rows)),
                 stage.write_bytes("summary.csv", _csv_text(result.summary())),
                 stage.write_bytes("selectivity.csv", _csv_text(result.selectivity)),
                 stage.write_bytes("curves.png", curves_figure(result))]
        for mode in result.modes:
            files.append(stage.write_bytes(f"strip_{mode}.png", strip_figure(result, mode)))
        files.append(stage.write_bytes("summary.md", summary_markdown(result).encode()))
        files.append("manifest.json")
        stage.write_json("manifest.json", manifest(result, probe, files))
        return stage.commit()
