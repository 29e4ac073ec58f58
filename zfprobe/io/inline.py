"""Results shown inline in Jupyter: PNG bytes and small HTML made in memory, never on disk.

IPython asks an object for ``_repr_png_`` / ``_repr_html_`` when it is the value of a cell; the
result classes answer with these helpers, from the same drawing functions their ``save()`` uses,
so the notebook shows exactly the pictures that would be written.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 RGB array as PNG bytes (encoded by Pillow, as OutputStage.write_png writes it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


SMALL = 224  # px: smaller pictures (a 28x28 projection) are shown this wide, pixels kept sharp


def img_tag(png: bytes | np.ndarray, alt: str = "") -> str:
    """An <img> whose source is the PNG itself (a data URI), so the notebook needs no file; a
    small picture is displayed enlarged (the PNG itself is unchanged)."""
    from PIL import Image

    data = png if isinstance(png, bytes) else png_bytes(png)
    width = Image.open(io.BytesIO(data)).width
    style = "max-width:100%" if width >= SMALL else f"width:{SMALL}px;image-rendering:pixelated"
    return (f'<img alt="{html.escape(alt)}" style="{style}" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}"/>')


def gallery(*tags: str) -> str:
    """Pictures side by side, wrapping to the notebook's width."""
    return f'<div style="display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start">{"".join(tags)}</div>'


def markdown_html(text: str) -> str:
    """Markdown (the studies' tables and summaries) -> HTML, raw HTML in the source disabled."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def table_html(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain HTML table of ``rows`` (dicts), floats to 4 significant digits."""
    columns = columns or (list(rows[0]) if rows else [])

    def cell(v) -> str:
        return html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def block(title: str, *parts: str) -> str:
    """One result's HTML: a bold title line over its parts (already HTML)."""
    return f'<div class="zfprobe-result"><p><b>{html.escape(title)}</b></p>{"".join(parts)}</div>'
