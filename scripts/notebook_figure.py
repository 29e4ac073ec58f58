"""docs/img/notebook.png: docs/notebook.ipynb executed in a real kernel (nbclient, in a temporary
folder), drawn as one picture: each code cell's source, then what it displayed (PNG outputs as
they are, the pictures inside HTML outputs, an HTML table as text).

    python scripts/notebook_figure.py            # -> docs/img/notebook.png
"""
from __future__ import annotations

import base64
import html
import io
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
WIDTH, PAD = 1000, 10


def text_block(lines: list[str], colour=(0, 0, 0), background=(245, 245, 245)) -> Image.Image:
    font = ImageFont.load_default(size=13)
    im = Image.new("RGB", (WIDTH, 18 * len(lines) + 2 * PAD), background)
    draw = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        draw.text((PAD, PAD + 18 * i), line, fill=colour, font=font)
    return im


def fit(png: bytes) -> Image.Image:
    """A displayed picture at the size a notebook shows it (small ones enlarged, as img_tag does)."""
    from zfprobe.io.inline import SMALL

    im = Image.open(io.BytesIO(png)).convert("RGB")
    if im.width < SMALL:
        im = im.resize((SMALL, round(im.height * SMALL / im.width)), Image.NEAREST)
    if im.width > WIDTH - 2 * PAD:
        im = im.resize((WIDTH - 2 * PAD, round(im.height * (WIDTH - 2 * PAD) / im.width)), Image.LANCZOS)
    return im


def side_by_side(pictures: list[Image.Image]) -> list[Image.Image]:
    """Pictures side by side, wrapping at the page width (the inline gallery's flex layout)."""
    out, row = [], []
    for p in pictures + [None]:
        if p is None or (row and sum(r.width + PAD for r in row) + p.width > WIDTH - PAD):
            im = Image.new("RGB", (WIDTH - PAD, max(r.height for r in row)), "white")
            x = 0
            for r in row:
                im.paste(r, (x, 0))
                x += r.width + PAD
            out.append(im)
            row = []
        if p is not None:
            row.append(p)
    return out


def output_parts(output) -> list[Image.Image]:
    data = output.get("data", {})
    if "image/png" in data:
        return [fit(base64.b64decode(data["image/png"]))]
    if "text/html" in data:
        page = data["text/html"]
        pictures = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
        title = html.unescape(re.sub(r"<[^>]+>", "", page.split("<table>")[0].split("<img")[0]).strip())
        if pictures:
            return [text_block([title], background=(255, 255, 255))] + \
                side_by_side([fit(base64.b64decode(p)) for p in pictures])
        rows = re.findall(r"<tr>(.*?)</tr>", page, re.S)
        lines = [title] + [" | ".join(html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", r))
                                          for r in rows]
        return [text_block(lines, background=(255, 255, 255))]
    if "text/plain" in data:
        return [text_block(data["text/plain"].splitlines()[:4], background=(255, 255, 255))]
    return []


def main() -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(ROOT / "docs" / "notebook.ipynb", as_version=4)
    with tempfile.TemporaryDirectory() as cwd:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    parts: list[Image.Image] = []
    for n, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), 1):
        parts.append(text_block([f"In [{n}]:  " + cell.source.splitlines()[0]] + ["          " + l for l in cell.source.splitlines()[1:]],
                                colour=(0, 0, 120)))
        for output in cell.outputs:
            parts += output_parts(output)
    sheet = Image.new("RGB", (WIDTH, sum(p.height + PAD for p in parts) + PAD), "white")
    y = PAD
    for p in parts:
        sheet.paste(p, (0 if p.width == WIDTH else PAD, y))
        y += p.height + PAD
    out = ROOT / "docs" / "img" / "notebook.png"
    sheet.save(out, optimize=True)
    print(out, sheet.size, f"{out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
