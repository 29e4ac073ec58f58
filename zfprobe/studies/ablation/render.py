"""Tables and plots of ``zfprobe ablate`` (paper Table 3) and per-channel importance."""
from __future__ import annotations

import csv
import io
import os
import textwrap
from typing import TYPE_CHECKING

import numpy as np

from zfprobe.io.pictures import figure_png, new_figure

if TYPE_CHECKING:  # annotations only: the results show themselves through this module
    from zfprobe.studies.ablation.compute import AblationResult, Importance


def metrics_rows(result: AblationResult) -> list[dict]:
    rows = [dict(variant="intact", **result.intact.to_dict())]
    rows.append(dict(variant="; ".join(result.applied), **result.ablated.to_dict()))
    return rows


def metrics_csv(result: AblationResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "top1", "top5", "loss", "images"])
    for r in metrics_rows(result):
        w.writerow([r["variant"], f"{r['top1']:.6f}", f"{r['top5']:.6f}", f"{r['loss']:.6f}", r["images"]])
    return buf.getvalue()


def markdown_table(result: AblationResult) -> str:
    k = result.intact.k
    lines = [f"| Network | Top-1 acc % | Top-{k} acc % | Top-1 error % | Loss |", "|---|---|---|---|---|"]
    for r in metrics_rows(result):
        lines.append(f"| {r['variant']} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f} | {100 * (1 - r['top1']):.1f} | {r['loss']:.3f} |")
    if result.retrained:
        rt = result.retrained
        lines.append("")
        lines.append(f"Softmax retrained on the penultimate features (`{rt['features']}`), {rt['train']} training / "
                     f"{rt['test']} test images:")
        lines.append("")
        lines.append("| Network | Top-1 acc % (retrained softmax) |")
        lines.append("|---|---|")
        lines.append(f"| intact | {100 * rt['intact']:.1f} |")
        lines.append(f"| ablated | {100 * rt['ablated']:.1f} |")
    return "\n".join(lines) + "\n"


def comparison_plot(result: AblationResult, title: str) -> bytes:
    fig = new_figure(6.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    names = ["top-1", f"top-{result.intact.k}"] + (["top-1, retrained softmax"] if result.retrained else [])
    intact = [result.intact.top1, result.intact.top5] + ([result.retrained["intact"]] if result.retrained else [])
    ablated = [result.ablated.top1, result.ablated.top5] + ([result.retrained["ablated"]] if result.retrained else [])
    x = np.arange(len(names))
    for off, vals, label, color in ((-0.2, intact, "intact", "#1f77b4"), (0.2, ablated, "ablated", "#d62728")):
        bars = ax.bar(x + off, [100 * v for v in vals], 0.38, label=label, color=color, edgecolor="black", linewidth=0.5)
        for b, v in zip(bars, vals):
            ax.annotate(f"{100 * v:.1f}", (b.get_x() + b.get_width() / 2, 100 * v), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 108)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    return figure_png(fig)


def importance_csv(imp: Importance, links: dict[int, str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "channel", "top1_drop", "loss_increase", "mine_picture"])
    for rank, c in enumerate(imp.ranking()):
        w.writerow([rank + 1, int(c), f"{imp.drop_top1[c]:.6f}", f"{imp.drop_loss[c]:.6f}", links.get(int(c), "")])
    return buf.getvalue()


def importance_plot(imp: Importance, title: str, show: int = 64) -> bytes:
    """Channels ranked by the top-1 accuracy lost when each alone is ablated (bars), the loss
    increase on a second axis (dots)."""
    order = imp.ranking()[:show]
    fig = new_figure(max(6.0, 0.16 * len(order) + 2), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(order))
    drops = 100 * imp.drop_top1[order]
    ax.bar(x, drops, 0.8, color=np.where(drops >= 0, "#d62728", "#2ca02c"), edgecolor="black", linewidth=0.3)
    ax.set_xticks(x)
    ax.set_xticklabels([str(int(c)) for c in order], rotation=90, fontsize=7)
    ax.set_xlabel(f"channel of {imp.layer}, most important first" + (f" (top {show} of {len(imp.drop_top1)})" if len(imp.drop_top1) > show else ""))
    ax.set_ylabel("top-1 accuracy lost (points)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(True, axis="y", alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, imp.drop_loss[order], "k.", markersize=4)
    ax2.set_ylabel("loss increase (dots)")
    ax.set_title(title, fontsize=9)
    return figure_png(fig)


def mine_links(mine_dir: str | None, layer: str, channels, out_dir: str) -> dict[int, str]:
    """Paths (relative to ``out_dir``) of ``zfprobe mine``'s per-channel top-9 PNGs that exist."""
    if not mine_dir:
        return {}
    from zfprobe.studies.mining.render import safe_name

    links = {}
    for c in channels:
        path = os.path.join(mine_dir, safe_name(layer), "channels", f"c{int(c):04d}.png")
        if os.path.isfile(path):
            links[int(c)] = os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
    return links


def importance_pictures(imp: Importance, pictures: dict[int, str], show: int = 6) -> bytes | None:
    """The most important channels' ``mine`` top-9 pictures (projections | image patches), each
    titled with its rank and the accuracy its removal costs; None when none exist."""
    from PIL import Image

    chans = [int(c) for c in imp.ranking()[:show] if int(c) in pictures]
    if not chans:
        return None
    cols = 2 if len(chans) > 1 else 1
    rows = (len(chans) + cols - 1) // cols
    fig = new_figure(4.2 * cols, 2.5 * rows)
    for i, c in enumerate(chans):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(np.asarray(Image.open(pictures[c]).convert("RGB")), interpolation="nearest")
        rank = int(np.flatnonzero(imp.ranking() == c)[0]) + 1
        ax.set_title(f"#{rank}: channel {c}, removing it costs {100 * imp.drop_top1[c]:.1f} points top-1", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{imp.layer}: most important channels and their top-9 (zfprobe mine: deconvnet projections | patches)",
                 fontsize=9)
    return figure_png(fig)
