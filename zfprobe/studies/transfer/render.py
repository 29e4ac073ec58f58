"""Tables, plots and the output folder of ``transfer`` and ``probe-layers`` (paper Tables 4-7).

Reads a :class:`~zfprobe.studies.transfer.compute.TransferResult`; writes ``scores.csv`` (every split),
``table.csv`` and ``table.md`` (mean +- standard deviation per layer and training-set size, in the
paper's format), a plot (accuracy against depth for ``probe-layers``; grouped bars with the
from-scratch baseline for ``transfer``), ``summary.md`` and ``manifest.json``.
"""
from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np

from zfprobe.io.pictures import figure_png, new_figure

if TYPE_CHECKING:  # annotations only: TransferResult shows itself through this module
    from zfprobe.studies.transfer.compute import TransferResult


def pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"


def markdown_table(result: TransferResult) -> str:
    head = "| Layer | " + " | ".join(f"Acc % ({n}/class)" for n in result.per_class) + " |"
    lines = [head, "|" + "---|" * (len(result.per_class) + 1)]
    for row in result.table():
        name = "trained from scratch" if row["method"] == "scratch" else f"{row['layer']} + softmax"
        cells = [f"{pct(row[f'mean_{n}'])} ± {pct(row[f'std_{n}'])}" for n in result.per_class]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def scores_csv(result: TransferResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "layer", "per_class", "split", "accuracy", "C", "n_train", "n_test"])
    for s in result.scores:
        w.writerow([s.method, s.layer, s.per_class, s.split, f"{s.accuracy:.6f}", "" if s.C is None else f"{s.C:g}",
                    s.n_train, s.n_test])
    return buf.getvalue()


def table_csv(result: TransferResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "layer"] + [f"{k}_{n}" for n in result.per_class for k in ("mean", "std")])
    for row in result.table():
        w.writerow([row["method"], row["layer"]] + [f"{row[f'{k}_{n}']:.6f}" for n in result.per_class for k in ("mean", "std")])
    return buf.getvalue()


def depth_plot(result: TransferResult, title: str) -> bytes:
    """Accuracy against depth (Table 7 as a picture): one line per N, error bars = std over splits."""
    rows = result.table()
    soft = [r for r in rows if r["method"] == "softmax"]
    scratch = [r for r in rows if r["method"] == "scratch"]
    fig = new_figure(max(5.5, 0.75 * len(soft) + 2.5), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(soft))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, n in enumerate(result.per_class):
        color = colors[i % len(colors)]
        mean = np.array([100 * r[f"mean_{n}"] for r in soft])
        std = np.array([100 * r[f"std_{n}"] for r in soft])
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, color=color, label=f"softmax, {n}/class")
        for xi, m in zip(x, mean):  # beside the point (right of the error bar), on white, one colour per N
            ax.annotate(f"{m:.1f}", (xi, m), textcoords="offset points", xytext=(6, 0), ha="left", va="center",
                        fontsize=7, color=color, bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.8))
        if scratch:
            ax.axhline(100 * scratch[0][f"mean_{n}"], color=color, linestyle="--", linewidth=1,
                       label=f"trained from scratch, {n}/class")
    ax.set_xticks(x)
    ax.set_xticklabels([r["layer"] for r in soft], rotation=30 if len(soft) > 5 else 0, ha="right" if len(soft) > 5 else "center")
    ax.set_xlabel("layer (input side → output side)")
    ax.set_ylabel("test accuracy (%)")
    lo = min([100 * r[f"mean_{n}"] - 100 * r[f"std_{n}"] for r in rows for n in result.per_class] + [100])
    ax.set_ylim(max(0, lo - 8), 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    return figure_png(fig)


def bar_plot(result: TransferResult, title: str) -> bytes:
    """Grouped bars: per training-set size, each layer's softmax and the from-scratch net."""
    rows = result.table()
    fig = new_figure(max(5.0, 1.6 * len(result.per_class) * max(1, len(rows)) / 2 + 2), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(rows))
    palette = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for j, row in enumerate(rows):
        scratch = row["method"] == "scratch"
        xs = np.arange(len(result.per_class)) + (j - (len(rows) - 1) / 2) * width
        means = [100 * row[f"mean_{n}"] for n in result.per_class]
        stds = [100 * row[f"std_{n}"] for n in result.per_class]
        label = "same net trained from scratch" if scratch else f"pretrained {row['layer']} + new softmax"
        bars = ax.bar(xs, means, width * 0.92, yerr=stds, capsize=3, label=label,
                      color="#bbbbbb" if scratch else palette[j % len(palette)], edgecolor="black", linewidth=0.5)
        for b, m in zip(bars, means):
            ax.annotate(f"{m:.1f}", (b.get_x() + b.get_width() / 2, m), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=8)
    ax.set_xticks(np.arange(len(result.per_class)))
    ax.set_xticklabels([f"{n} training images per class" for n in result.per_class])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(3, len(rows)), frameon=False)
    ax.set_title(title, fontsize=10)
    return figure_png(fig)


def summary_markdown(result: TransferResult, command: str, model: str, data: str, pool: str) -> str:
    rows = result.table()
    soft = [r for r in rows if r["method"] == "softmax"]
    scratch = [r for r in rows if r["method"] == "scratch"]
    n = max(result.per_class)
    lines = [f"# zfprobe {command}: {model} on {data}", ""]
    test = "a separate test set" if result.separate_test else "the images not drawn for training"
    lines.append(f"A new softmax (multinomial logistic regression, C chosen by cross-validation on the training "
                 f"images only) was trained on the fixed, {pool}-pooled and standardized features of each layer, with "
                 f"{' and '.join(str(p) for p in result.per_class)} training images per class, over {result.n_splits} "
                 f"random split(s) (seed {result.seed}), and tested on {test}.")
    lines.append("")
    lines.append(markdown_table(result))
    if soft:
        best = max(soft, key=lambda r: r[f"mean_{n}"])
        lines.append(f"With {n} images per class, the best layer is **{best['layer']}** at "
                     f"{pct(best[f'mean_{n}'])}% ± {pct(best[f'std_{n}'])}.")
        if len(soft) > 1:
            means = [r[f"mean_{n}"] for r in soft]
            rises = sum(b > a for a, b in zip(means, means[1:]))
            grows = "grows with depth at every step" if rises == len(means) - 1 else \
                f"grows with depth at {rises} of {len(means) - 1} steps (not monotonically)"
            lines.append(f"Accuracy {grows}: from {pct(means[0])}% at {soft[0]['layer']} to {pct(means[-1])}% at "
                         f"{soft[-1]['layer']}.")
    if scratch and soft:
        s = scratch[0][f"mean_{n}"]
        top = soft[-1]
        lines.append(f"The same architecture trained from scratch on the same {n} images per class reaches "
                     f"{pct(s)}% ± {pct(scratch[0][f'std_{n}'])}; the pretrained {top['layer']} features with a new "
                     f"softmax reach {pct(top[f'mean_{n}'])}% ({100 * (top[f'mean_{n}'] - s):+.1f} points).")
    lines.append("")
    lines.append("Files: `table.md` / `table.csv` (means and standard deviations), `scores.csv` (every split), "
                 "the plot, and `manifest.json` (seeds, the training images of every split).")
    return "\n".join(lines) + "\n"
