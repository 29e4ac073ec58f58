"""Small HTML pieces of the static report: the page skeleton, tables, Markdown, the graph picture.

Everything is local (one stylesheet, one script, relative links), so a report opens from
``file://`` and can be zipped and mailed.
"""
from __future__ import annotations

import html
import os

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, depth: int = 0, script: bool = False) -> str:
    """A complete page; ``depth`` is how many folders below the report root it lives."""
    up = "../" * depth
    js = f'<script src="{up}assets/report.js"></script>' if script else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} - zfprobe report</title>
<link rel="stylesheet" href="{up}assets/style.css">
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><nav aria-label="report"><a href="{up}index.html">Model</a><a href="{up}index.html#layers">Layers</a><a href="{up}index.html#analyses">Analyses</a></nav></header>
<main id="main">
<h1>{esc(title)}</h1>
{body}
</main>
{js}
</body>
</html>
"""


def table(header: list[str], rows: list[list], raw: bool = False, caption: str | None = None) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then they are trusted HTML)."""
    cell = (lambda v: str(v)) if raw else esc
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in header) if any(header) else ""
    if not head:  # a key-value table: the first cell of each row is its header
        body = "".join(f'<tr><th scope="row">{cell(row[0])}</th>' + "".join(f"<td>{cell(v)}</td>" for v in row[1:]) + "</tr>"
                       for row in rows)
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        return f"<table>{cap}<tbody>{body}</tbody></table>"
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown(text: str) -> str:
    """Markdown -> HTML (markdown-it-py, raw HTML in the source disabled); headings are moved one
    level down so the page keeps a single <h1>."""
    from markdown_it import MarkdownIt

    out = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    for level in range(5, 0, -1):
        out = out.replace(f"<h{level}>", f"<h{level + 1}>").replace(f"</h{level}>", f"</h{level + 1}>")
    return out


OP_COLOURS = {"Conv": "#1f77b4", "ConvTranspose": "#17becf", "Relu": "#d62728", "Clip": "#d62728",
              "MaxPool": "#2ca02c", "AveragePool": "#98df8a", "GlobalAveragePool": "#98df8a", "Add": "#ff7f0e",
              "Concat": "#ffbb78", "BatchNormalization": "#9467bd", "Gemm": "#8c564b", "MatMul": "#8c564b",
              "Pad": "#c7c7c7", "Flatten": "#7f7f7f", "Reshape": "#7f7f7f", "LRN": "#e377c2"}


def graph_svg(nodes: list[tuple[str, str]], per_row: int = 40, cell: int = 14) -> str:
    """A compact picture of the graph: one square per node in execution order, coloured by op
    type (hover for the name), with a legend; the ``alt`` of the figure names the op counts."""
    from collections import Counter

    rows = max(1, -(-len(nodes) // per_row))
    width, height = per_row * cell + 2, rows * cell + 2
    rects = []
    for i, (name, op) in enumerate(nodes):
        r, c = divmod(i, per_row)
        colour = OP_COLOURS.get(op, "#bcbd22")
        rects.append(f'<rect x="{1 + c * cell}" y="{1 + r * cell}" width="{cell - 2}" height="{cell - 2}" '
                     f'fill="{colour}"><title>{esc(name)} ({esc(op)})</title></rect>')
    counts = Counter(op for _, op in nodes)
    label = ", ".join(f"{n} {op}" for op, n in counts.most_common())
    legend = " ".join(f'<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
                      f'fill="{OP_COLOURS.get(op, "#bcbd22")}"/></svg> {esc(op)} ({n})</span>'
                      for op, n in counts.most_common())
    return (f'<figure><svg class="graph" role="img" aria-label="graph of {len(nodes)} nodes: {esc(label)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(rects)}</svg>'
            f'<figcaption class="note">{len(nodes)} nodes in execution order (left to right, top to bottom). '
            f'{legend}</figcaption></figure>')


def rule_toggle(default: str, reason: str) -> str:
    """Radio buttons that show the projections of one rule or all three (report.js), the default
    rule first with its reason."""
    from zfprobe.engine.rules import RULES

    opts = [("all", "all three")] + [(r, r + (" (default)" if r == default else "")) for r in RULES]
    buttons = "".join(f'<label><input type="radio" name="rule" value="{esc(v)}"{" checked" if v == "all" else ""}> '
                      f"{esc(t)}</label> " for v, t in opts)
    return (f'<fieldset id="rules" class="pager"><legend>Rule shown</legend>{buttons}</fieldset>'
            f'<p class="note">Default rule here: {esc(default)}, because {esc(reason)}.</p>')


def url(path: str) -> str:
    """A relative file path as it must appear in src / href: percent signs and other reserved
    characters quoted (the layer folders of ONNX names such as "/_blocks.2/Add" are written
    "%2F_blocks.2%2FAdd" on disk, which a browser would decode back into slashes)."""
    from urllib.parse import quote

    return quote(path, safe="/")
