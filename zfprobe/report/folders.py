"""Pages for analysis output folders: any folder with a ``manifest.json`` naming its ``command``.

The shared convention (every zfprobe command): ``manifest.json`` with ``command``, figures as PNG
and tables as CSV at the top level, and, for analyses, a plain-words ``summary.md``. A folder of
a command this module has never seen still gets a page (summary, figures, tables); ``mine``,
``occlude`` and ``visualize`` folders get their own layouts.
"""
from __future__ import annotations

import csv
import json
import os

from zfprobe.report.html import esc, markdown, table

MAX_TABLE_ROWS = 200


def find_analyses(root: str) -> list[tuple[str, dict]]:
    """(folder name, manifest) of each direct subfolder of ``root`` holding a command's output."""
    out = []
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "manifest.json")
        if name.startswith(".") or os.path.islink(os.path.join(root, name)) or not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("command"), str):
            out.append((name, manifest))
    return out


def _listed(folder: str, manifest: dict, ext: str, top_only: bool = True) -> list[str]:
    files = [f for f in manifest.get("files", []) if isinstance(f, str)]
    files = [os.path.relpath(f, folder) if os.path.isabs(f) else f for f in files]
    if not files:
        files = sorted(os.listdir(folder))
    files = [f for f in files if f.lower().endswith(ext) and ".." not in f.split("/") and os.path.isfile(os.path.join(folder, f))]
    return [f for f in files if "/" not in f] if top_only else files


def _figures(name: str, files: list[str], what: str) -> str:
    return "".join(f'<figure><img src="../{esc(name)}/{esc(f)}" alt="{esc(what)}: {esc(f)}" loading="lazy" '
                   f'style="max-width:100%"><figcaption>{esc(f)}</figcaption></figure>' for f in files)


def _csv_tables(folder: str, name: str, files: list[str]) -> str:
    out = []
    for f in files:
        try:
            with open(os.path.join(folder, f), newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if not rows:
            continue
        body = rows[1: MAX_TABLE_ROWS + 1]
        more = f" (first {MAX_TABLE_ROWS} of {len(rows) - 1} rows)" if len(rows) - 1 > MAX_TABLE_ROWS else ""
        out.append(f'<h2>{esc(f)}</h2><p class="note"><a href="../{esc(name)}/{esc(f)}">{esc(f)}</a>{more}</p>'
                   + table(rows[0], body))
    return "".join(out)


def analysis_page(root: str, name: str, manifest: dict) -> tuple[str, str]:
    """(title, body HTML) of the page for ``root/name`` (pages live in ``root/analyses/``)."""
    folder = os.path.join(root, name)
    command = manifest.get("command", "?")
    parts = []
    summary = os.path.join(folder, "summary.md")
    if os.path.isfile(summary):
        with open(summary, encoding="utf-8", errors="replace") as f:
            parts.append(f'<section aria-label="summary">{markdown(f.read())}</section>')
    model = manifest.get("model") or {}
    facts = [["command", command], ["model", model.get("path", "-")], ["model sha256", model.get("sha256", "-")]]
    for key in ("layer", "layers", "image", "rule"):
        if key in manifest and not isinstance(manifest[key], dict):
            facts.append([key, manifest[key]])
    parts.append(table(["", ""], facts))
    pngs = _listed(folder, manifest, ".png")
    if command == "visualize":
        parts.append("<h2>Contact sheet</h2>" + _figures(name, [f for f in pngs if f == "contact_sheet.png"], "contact sheet"))
        rows = [[s.get("channel"), s.get("position"), f'{s.get("value", 0):.4g}',
                 f'<img src="../{esc(name)}/{esc(s["file"])}" alt="projection of channel {esc(s.get("channel"))}" width="112" loading="lazy">']
                for s in manifest.get("seeds", []) if isinstance(s, dict) and s.get("file")]
        parts.append("<h2>Projections</h2>" + table(["channel", "position", "value", "projection"], rows, raw=True))
    elif command == "occlude":
        parts.append("<h2>Occlusion maps</h2>" + _figures(name, pngs, "occlusion"))
    elif command == "mine":
        sheets = _listed(folder, manifest, ".png", top_only=False)
        sheets = [f for f in sheets if "/sheet_" in f]
        parts.append("<h2>Fig. 2 sheets</h2>" + _figures(name, sheets, "mining sheet"))
    else:
        parts.append("<h2>Figures</h2>" + (_figures(name, pngs, command) or '<p class="note">no figures</p>'))
    parts.append(_csv_tables(folder, name, _listed(folder, manifest, ".csv")))
    parts.append(f'<p class="note"><a href="../{esc(name)}/manifest.json">manifest.json</a></p>')
    return f"{command}: {name}", "".join(parts)
