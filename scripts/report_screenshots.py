"""Screenshots of a built report in headless Chromium (for docs/img): the model page, every layer
page (the first as PREFIX_layer, the others PREFIX_layer2, PREFIX_layer3, ...) and the first
layer's first unit page.

    python scripts/report_screenshots.py REPORT_DIR PREFIX   # -> docs/img/PREFIX_{model,layer,layer2,..,unit}.png
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(report: str, prefix: str) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    m = json.loads((Path(report) / "manifest.json").read_text())
    first = next(iter(m["layers"].values()))
    pages = {"model": "index.html"}
    for i, meta in enumerate(m["layers"].values()):
        pages[f"layer{i + 1 if i else ''}"] = meta["page"]
    if first["unit_pages"]:
        from zfprobe.studies.mining.render import safe_name

        layer = next(iter(m["layers"]))
        pages["unit"] = f"units/{safe_name(layer)}/c{first['unit_pages'][0]:04d}.html"
    try:
        for kind, rel in pages.items():
            d.get((Path(report).resolve() / rel).as_uri())
            d.execute_script("document.querySelectorAll('img').forEach(function(i){i.loading='eager'; i.src = i.src;});")
            deadline = time.time() + 20  # wait until every image has loaded (lazy images included)
            while time.time() < deadline and not d.execute_script(
                    "return Array.from(document.images).every(function(i){return i.complete;})"):
                time.sleep(0.1)
            time.sleep(0.5)
            out = ROOT / "docs" / "img" / f"{prefix}_{kind}.png"
            d.save_screenshot(str(out))
            print(out)
    finally:
        d.quit()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
