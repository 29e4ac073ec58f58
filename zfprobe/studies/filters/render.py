"""Pictures, tables and the summary of a filter diagnosis (zfprobe.studies.filters.compute): Fig. 6 (a)-(c).

- ``filters.png``: the filter grid. Each filter is normalized on its own and shown with the
  signed mapping of zfprobe's projections, ``128 + 127 * w / max|w|`` per pixel and input
  channel (grey = 0): input channels 1 -> grey, 3 -> colour in RGB order (BGR models are
  flipped); a deeper layer shows, per filter, its input channel with the most energy.
- ``spectra.png``: per filter, the amplitude spectrum (DC in the centre, normalized per filter,
  magma colour map) with the stride's Nyquist square drawn in cyan.
- ``coverage.png``: the filter bank in the (orientation, frequency) plane (matplotlib polar
  plot): one dot per filter at its dominant frequency, size by RMS, colour by the fraction of its
  energy above the Nyquist frequency, dead filters as red crosses, the Nyquist radius dashed.
"""
from __future__ import annotations

import csv
import io
import os
from typing import TYPE_CHECKING

import numpy as np

from zfprobe.io.pictures import contact_sheet, figure_png, pyplot

if TYPE_CHECKING:  # annotations only: Diagnosis shows itself through this module
    from zfprobe.studies.filters.compute import Diagnosis

FILTER_MAPPING = ("each filter w is shown as 128 + 127 * w / max|w| (that filter's own maximum), per pixel and "
                  "input channel: grey = 0, brighter = positive; 3 input channels as RGB, 1 as grey, more: the "
                  "input channel with the most energy")
LOW, HIGH = 0.1, 0.3   # cycles / pixel: the bands the summary counts (below LOW: low, above HIGH: high)


def filter_tiles(d: Diagnosis, channel_order: str = "RGB") -> list[np.ndarray]:
    w = d.bank.weights
    tiles = []
    for f in w:
        if f.shape[0] == 3:
            x = f.transpose(1, 2, 0)
            if channel_order.upper() == "BGR":
                x = x[..., ::-1]
        elif f.shape[0] == 1:
            x = f[0][..., None]
        else:
            x = f[int(np.argmax((f ** 2).sum(axis=(1, 2))))][..., None]
        scale = float(np.abs(x).max())
        t = np.full(x.shape, 128.0) if scale <= 0 else 128 + 127 * x / scale
        t = np.round(t).astype(np.uint8)
        tiles.append(np.repeat(t, 3, axis=2) if t.shape[2] == 1 else t)
    return tiles


def spectrum_tiles(d: Diagnosis) -> list[np.ndarray]:
    from matplotlib import colormaps

    cmap = colormaps["magma"]
    m = d.measures
    n = len(m.frequencies)
    ny, nx = m.nyquist
    box = np.zeros((n, n), bool)
    f = m.frequencies
    if ny < 0.5 or nx < 0.5:
        iy = np.flatnonzero(np.abs(np.abs(f) - ny) == np.abs(np.abs(f) - ny).min())
        ix = np.flatnonzero(np.abs(np.abs(f) - nx) == np.abs(np.abs(f) - nx).min())
        inside_y, inside_x = np.abs(f) <= ny + 1e-9, np.abs(f) <= nx + 1e-9
        for y in iy:
            box[y, inside_x] = True
        for x in ix:
            box[inside_y, x] = True
    tiles = []
    for a in m.amplitude:
        peak = a.max()
        rgb = (cmap(a / peak if peak > 0 else a)[..., :3] * 255).astype(np.uint8)
        rgb[box] = (0, 255, 255)
        tiles.append(rgb)
    return tiles


def captions(d: Diagnosis) -> list[str]:
    out = []
    for i in range(d.bank.count):
        tag = "DEAD" if d.dead[i] else f"a{100 * d.measures.alias_fraction[i]:.0f}%"
        out.append(f"{i} {tag}")
    return out


def grid(d: Diagnosis, tiles: list[np.ndarray], title: str, tile_size: int = 64) -> np.ndarray:
    columns = int(np.ceil(np.sqrt(len(tiles) * 1.5)))
    return contact_sheet(tiles, captions(d), columns=columns, tile_size=tile_size, title=title)


def sheets(d: Diagnosis, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The filters sheet and the amplitude-spectra sheet of one bank (titles start with ``label``)."""
    head = f"{label} {d.bank.layer}".strip()
    return (grid(d, filter_tiles(d, d.channel_order), f"{head}: filters"),
            grid(d, spectrum_tiles(d), f"{head}: amplitude spectra"))


def coverage_png(diagnoses: list[tuple[str, Diagnosis]]) -> bytes:
    """The (orientation, frequency) plane of each bank, side by side."""
    plt = pyplot()

    fig = plt.figure(figsize=(5.4 * len(diagnoses), 3.6), dpi=110)
    for k, (label, d) in enumerate(diagnoses):
        m = d.measures
        ax = fig.add_subplot(1, len(diagnoses), k + 1, projection="polar")
        ax.set_thetamin(0)
        ax.set_thetamax(180)
        rmax = float(np.hypot(0.5, 0.5))
        ax.set_rlim(0, rmax)
        size = 12 + 120 * (m.rms / m.rms.max() if m.rms.max() > 0 else m.rms)
        live = ~d.dead
        sc = ax.scatter(np.radians(m.orientation_deg[live]), m.dominant_frequency[live], s=size[live],
                        c=m.alias_fraction[live], cmap="viridis", vmin=0, vmax=1, alpha=0.8, edgecolors="k", linewidths=0.3)
        if (~live).any():
            ax.scatter(np.radians(m.orientation_deg[~live]), m.dominant_frequency[~live], marker="x", c="red",
                       s=40, label=f"dead ({int((~live).sum())})")
            ax.legend(loc="upper left", fontsize=7, bbox_to_anchor=(-0.12, 1.02))
        ny = min(m.nyquist)
        theta = np.linspace(0, np.pi, 100)
        ax.plot(theta, np.full_like(theta, ny), "--", color="crimson", lw=1)
        ax.text(np.radians(175), ny, f"Nyquist\nstride {max(d.bank.stride)}", fontsize=7, color="crimson",
                ha="center", va="bottom")
        ax.set_title(f"{label}\n{d.bank.layer}: {d.bank.count} filters {d.bank.kernel[0]}x{d.bank.kernel[1]}, "
                     f"stride {d.bank.stride[0]}", fontsize=9)
        ax.text(0.5, -0.02, "radius: dominant frequency (cycles/px); angle: orientation (deg)", fontsize=7,
                transform=ax.transAxes, ha="center", va="top")
        ax.tick_params(labelsize=7)
        fig.colorbar(sc, ax=ax, shrink=0.6, pad=0.08, label="energy above Nyquist")
    fig.tight_layout()
    return figure_png(fig, tight=False)


def table_rows(label: str, d: Diagnosis) -> list[dict]:
    m, s = d.measures, d.stats
    rows = []
    for i in range(d.bank.count):
        row = {"model": label, "layer": d.bank.layer, "filter": i, "rms": f"{m.rms[i]:.6g}", "norm": f"{m.norm[i]:.6g}",
               "dominant_frequency": f"{m.dominant_frequency[i]:.4f}", "orientation_deg": f"{m.orientation_deg[i]:.1f}",
               "alias_fraction": f"{m.alias_fraction[i]:.4f}", "dead": int(d.dead[i]), "dead_reasons": ";".join(d.reasons(i))}
        if s is not None:
            row.update(active_rate=f"{s.active_rate[i]:.6f}", saturated_rate=f"{s.saturated_rate[i]:.6f}",
                       max_activation=f"{s.max[i]:.6g}")
        rows.append(row)
    return rows


def to_csv(rows: list[dict]) -> bytes:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def findings(label: str, d: Diagnosis) -> list[str]:
    """Plain sentences naming what is wrong (or that nothing is)."""
    b, m = d.bank, d.measures
    lines = [f"**{label}**, layer `{b.layer}`: {b.count} filters {b.kernel[0]}x{b.kernel[1]}, stride "
             f"{b.stride[0]}x{b.stride[1]}" + (" (the first conv layer)" if b.first else "") + "."]
    dead = d.dead
    n_dead = int(dead.sum())
    if n_dead:
        kinds = []
        for name, flags in (("near-zero norm", d.dead_norm), ("never active", d.dead_inactive),
                            ("always saturated", d.dead_saturated)):
            if flags is not None and flags.any():
                kinds.append(f"{int(flags.sum())} {name}")
        lines.append(f"- {n_dead} of {b.count} filters dead ({', '.join(kinds)}): "
                     + ", ".join(map(str, np.flatnonzero(dead)[:24])) + (" ..." if n_dead > 24 else "") + ".")
    else:
        lines.append(f"- No dead filter among {b.count}" + (" (norm and data checks)." if d.stats else " (norm check; give DATA for the activity checks)."))
    share = m.bank_alias_fraction
    s = max(b.stride)
    if s > 1:
        verdict = " - an aliasing risk (the paper's AlexNet layer 1)" if share >= 0.1 else ""
        lines.append(f"- {100 * share:.0f}% of the bank's energy lies above the stride-{s} Nyquist frequency "
                     f"({0.5 / s:.3g} cycles/px){verdict}; {int((m.alias_fraction > 0.5).sum())} filters have most of "
                     "their energy there.")
    else:
        lines.append("- Stride 1: nothing above the Nyquist frequency, no aliasing risk from this layer.")
    live = ~dead
    f = m.dominant_frequency[live]
    low, high = int((f < LOW).sum()), int((f > HIGH).sum())
    mid = int(live.sum()) - low - high
    extremes = live.sum() >= 8 and low > 0 and high > 0 and mid < 0.2 * live.sum()
    lines.append(f"- Dominant frequencies of the live filters: {low} low (< {LOW} cycles/px), {mid} mid, {high} high "
                 f"(> {HIGH})" + (" - a mix of extremes with little in between (the paper's AlexNet symptom)."
                                  if extremes else "."))
    return lines


def aliasing_png(check) -> bytes:
    """The averaged projection spectrum (log scale) with the stride lines marked, and the projections."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 4.4), dpi=110)
    spec = check.spectrum
    h, w = spec.shape
    ext = (-0.5, 0.5 - 1 / w, 0.5 - 1 / h, -0.5)
    im = ax.imshow(np.log10(spec + 1e-12), cmap="magma", extent=ext)
    for k in range(1, check.period):
        for v in (k / check.period, -k / check.period):
            if abs(v) <= 0.5:
                ax.axvline(v, color="cyan", lw=0.5, ls=":")
                ax.axhline(v, color="cyan", lw=0.5, ls=":")
    ax.set_title(f"{check.layer}: mean projection spectrum ({len(check.channels)} units)\n"
                 f"grid contrast at period {check.period}: {check.grid_contrast:.2f}", fontsize=9)
    ax.set_xlabel("fx (cycles/px)")
    ax.set_ylabel("fy (cycles/px)")
    fig.colorbar(im, ax=ax, label="log10 normalized power")
    fig.tight_layout()
    return figure_png(fig, tight=False)


def save_diagnosis(out_dir: str, items: list, aliasing: list | None = None, extra: dict | None = None) -> list[str]:
    """Write filters/spectra/coverage PNGs, filters.csv, summary.md and manifest.json, all or nothing.

    ``items``: [(label, probe, diagnosis)]; two items make a side-by-side comparison (Fig. 6 a vs b).
    ``aliasing``: [(label, AliasingCheck)] for deeper layers."""
    from zfprobe.io.provenance import __version__
    from zfprobe.io.outputs import OutputStage
    from zfprobe.io.pictures import projection_to_hwc, signed_to_uint8
    from zfprobe.studies.visualize.compute import file_sha256

    aliasing = aliasing or []
    many = len(items) > 1
    with OutputStage(out_dir) as stage:
        files, rows, summary, models, drawn = [], [], ["# First-layer filter diagnostics", ""], [], []
        for k, (label, probe, d) in enumerate(items):
            suffix = f"_{chr(ord('a') + k)}" if many else ""
            sheet, spectra = sheets(d, label)
            drawn.append(sheet)
            files.append(stage.write_png(f"filters{suffix}.png", sheet))
            files.append(stage.write_png(f"spectra{suffix}.png", spectra))
            rows += table_rows(label, d)
            summary += findings(label, d) + [""]
            src = probe.source
            models.append({"label": label, "path": src, "sha256": file_sha256(src) if src and os.path.isfile(src) else None,
                           "input_shape": list(probe.input_shape), "layer": d.bank.layer, "conv_node": d.bank.node,
                           "filters": d.bank.count, "kernel": list(d.bank.kernel), "stride": list(d.bank.stride),
                           "groups": d.bank.groups, "fft_size": len(d.measures.frequencies),
                           "bank_alias_fraction": d.measures.bank_alias_fraction, "dead": int(d.dead.sum()),
                           "activity": None if d.stats is None else {"tensor": d.stats.tensor, "ceiling": d.stats.ceiling,
                                                                     "images": d.stats.images, "positions": d.stats.positions}})
        files.append(stage.write_bytes("coverage.png", coverage_png([(label, d) for label, _, d in items])))
        if many:
            files.append(stage.write_png("compare.png", _side_by_side(drawn)))
        files.append(stage.write_bytes("filters.csv", to_csv(rows)))
        alias_rows = []
        for k, (label, check) in enumerate(aliasing):
            suffix = f"_{chr(ord('a') + k)}" if len(aliasing) > 1 else ""
            files.append(stage.write_bytes(f"aliasing{suffix}.png", aliasing_png(check)))
            probe = items[k][1]
            layout = probe.preprocessing.layout if probe.preprocessing else "NCHW"
            order = probe.preprocessing.channel_order if probe.preprocessing else "RGB"
            tiles = [signed_to_uint8(projection_to_hwc(p, layout, order)) for p in check.projections[:64]]
            files.append(stage.write_png(f"aliasing_projections{suffix}.png", contact_sheet(
                tiles, [f"c{c}" for c in check.channels[:64]], tile_size=96, title=f"{label} {check.layer}: strongest unit per map")))
            alias_rows.append(dict(model=label, **check.to_dict()))
            verdict = ("period 1: no stride grid to look for" if check.period < 2 else "a visible grid: aliasing from the stride below" if check.grid_contrast >= 2
                       else "no clear grid" if check.grid_contrast < 1.3 else "a faint grid")
            summary.append(f"- Aliasing check, **{label}** layer `{check.layer}`: the averaged spectrum of {len(check.channels)} "
                           f"projections has {check.grid_contrast:.2f}x the power on the period-{check.period} lines than beside "
                           f"them ({100 * check.grid_energy_fraction:.1f}% of the energy): {verdict}.")
        if alias_rows:
            files.append(stage.write_bytes("aliasing.csv", to_csv(alias_rows)))
        files.append(stage.write_bytes("summary.md", ("\n".join(summary).rstrip() + "\n").encode()))
        first = items[0][2]
        manifest = {"zfprobe_version": __version__, "command": "filters",
                    "model": {k: v for k, v in models[0].items() if k in ("path", "sha256", "input_shape")},
                    "models": models, "layer": first.bank.layer,
                    "thresholds": first.thresholds.to_dict(), "display": {"filters": FILTER_MAPPING,
                    "frequency_units": "cycles per input pixel; Nyquist of stride s = 1/(2s)",
                    "orientation": "degrees [0,180) of the dominant wave vector, 0 = varies along x"},
                    "aliasing": alias_rows, **(extra or {})}
        files.append("manifest.json")
        manifest["files"] = files
        stage.write_json("manifest.json", manifest)
        return stage.commit()


def _side_by_side(images: list[np.ndarray], gap: int = 12) -> np.ndarray:
    h = max(i.shape[0] for i in images)
    out = [np.pad(i, ((0, h - i.shape[0]), (0, gap), (0, 0)), constant_values=255) for i in images]
    return np.concatenate(out, axis=1)
