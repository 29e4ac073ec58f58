"""``zfprobe report``: the static site, checked in a real headless Chromium (Selenium, system
chromedriver), plus its bad-input behaviour. Skips the browser part only when no chromium is
installed (CI installs Debian's chromium and chromium-driver in .ci/run)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "zfprobe" / "data" / "mnist_cnn.onnx"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOC_IMG = ROOT / "docs" / "img"


def run_cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "zfprobe.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def _generic_analysis(folder: Path) -> None:
    """An output folder of a command this report has never seen (the shared convention)."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"zfprobe_version": "0", "command": "novel-study",
                                                      "model": {"path": str(MODEL), "sha256": "x"},
                                                      "files": ["summary.md", "curve.png", "table.csv", "manifest.json"]}))
    (folder / "summary.md").write_text("# Novel study\n\nThe **answer** is 42.\n\n- one\n- two\n")
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3))).save(folder / "curve.png")
    with open(folder / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([["layer", "score"], ["conv1", "0.5"], ["relu3", "0.9"]])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    out = base / "rep"
    _generic_analysis(out / "novel")
    occl = base / "occl"
    r = run_cli("occlude", MODEL, "--no-progress", "-o", occl)
    assert r.returncode == 0, r.stderr
    t = time.perf_counter()
    r = run_cli("report", MODEL, "-o", out, "--unit-pages", "2", "--include", occl, "-q",
                env_extra={"ZFPROBE_CACHE": str(base / "cache")})
    assert r.returncode == 0, r.stderr
    return out, time.perf_counter() - t, r.stdout


def test_report_files_and_manifest(report):
    out, seconds, stdout = report
    m = json.loads((out / "manifest.json").read_text())
    assert m["command"] == "report" and len(m["model"]["sha256"]) == 64
    assert list(m["layers"]) == ["pool1", "relu2", "relu3"]
    assert m["position"] == "inside" and "display only" in m["display"]  # the border rule and the display treatments
    # dead channels flagged in the manifest are exactly those never positive over the 20 digits (oracle: onnxruntime)
    import onnxruntime as ort
    from zfprobe.io.preprocess import load_image
    import zfprobe

    probe = zfprobe.load(str(MODEL))
    xs = np.concatenate([load_image(str(p), probe.preprocessing)[1] for p in sorted((ROOT / "zfprobe/data/samples").glob("*.png"))])
    import onnx

    model = onnx.load(str(MODEL))
    relu3 = [n for n in model.graph.node if n.name == "relu3"][0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(relu3, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString())
    acts = np.concatenate([sess.run([relu3], {sess.get_inputs()[0].name: x[None]})[0] for x in xs])
    dead = sorted(int(c) for c in np.flatnonzero(acts.max(axis=(0, 2, 3)) <= 0))
    assert m["layers"]["relu3"]["dead_channels"] == dead
    assert "novel" in m["analyses"] and "occl" in m["analyses"]
    assert "MB in" in stdout and "index.html" in stdout


def test_report_bad_input(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_cli("report", MODEL, "-o", f, "-q")
    assert r.returncode == 2 and r.stderr.startswith("zfprobe: error:") and ("is a file" in r.stderr or "not a folder" in r.stderr)
    assert "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("report", MODEL, empty, "-o", tmp_path / "o1", "-q")
    assert r.returncode == 2 and r.stderr.startswith("zfprobe: error:"), r.stderr
    assert not (tmp_path / "o1").exists()
    r = run_cli("report", MODEL, "--layers", "nope", "-o", tmp_path / "o2", "-q")
    assert r.returncode == 2 and "does not exist" in r.stderr and not (tmp_path / "o2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".zfprobe-staging")]


# ------------------------------------------------------------------------ browser ------------
def _driver():
    if not os.path.exists(CHROMEDRIVER) or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("no chromium / chromedriver installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000", "--allow-file-access-from-files"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def browser():
    d = _driver()
    yield d
    d.quit()


def _load_all_images(d) -> list:
    """Make lazy images load, wait, and return the src of every image that did not load."""
    d.execute_script("document.querySelectorAll('img').forEach(function(i){i.loading='eager'; i.src = i.src;});"
                     "document.querySelectorAll('figure.ch').forEach(function(f){f.hidden=false;});")
    deadline = time.time() + 20
    while time.time() < deadline:
        if d.execute_script("return Array.from(document.images).every(function(i){return i.complete;})"):
            break
        time.sleep(0.1)
    return d.execute_script("return Array.from(document.images).filter(function(i){return !(i.naturalWidth > 0);})"
                            ".map(function(i){return i.src;})")


def test_every_page_in_chromium(report, browser):
    """Every page loads without console errors, every image has loaded, every link resolves,
    every image has alt text and every page a heading."""
    out, _, _ = report
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 1 + 3 + 3 * 2 + 2  # index, layers, unit pages, analyses (novel, occl)
    for html in pages:
        browser.get(html.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, (html, errors)
        assert not _load_all_images(browser), html
        assert browser.execute_script("return Array.from(document.images).every(function(i){return i.alt && i.alt.trim();})"), html
        assert browser.execute_script("return document.querySelectorAll('h1').length") == 1, html
        for href in browser.execute_script("return Array.from(document.links).map(function(a){return a.href;})"):
            url = urlparse(href)
            assert url.scheme == "file", (html, href)  # nothing remote
            target = Path(unquote(url.path))
            assert target.exists(), (html, href)
            if url.fragment and target.suffix == ".html":
                assert f'id="{url.fragment}"' in target.read_text(), (html, href)


def test_channel_filter_and_screenshot(report, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, _, _ = report
    m = json.loads((out / "manifest.json").read_text())
    page = out / m["layers"]["relu3"]["page"]
    browser.get(page.as_uri())
    visible = lambda: browser.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('figure.ch')).filter(function(f){return !f.hidden;})"
        ".map(function(f){return parseInt(f.dataset.channel);})")
    assert visible() == list(range(64))
    box = browser.find_element(By.ID, "filter")
    box.send_keys("12")
    assert visible() == [12]
    box.clear()
    box.send_keys("dead")
    assert visible() == m["layers"]["relu3"]["dead_channels"]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("3-5")
    assert visible() == [3, 4, 5]
    box.send_keys(Keys.CONTROL, "a", Keys.BACKSPACE)
    # keyboard: Tab reaches the filter box, the pager and the channel links
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focusable = browser.execute_script("return document.querySelectorAll('a[href], input, button').length")
    assert focusable >= 3
    _load_all_images(browser)
    shot = out.parent / "report_layer.png"
    browser.save_screenshot(str(shot))
    im = Image.open(shot)
    assert im.size[0] >= 1000 and np.asarray(im).std() > 10


def test_defaults_rule_toggle_and_zoom(report, browser):
    """Issue 23: the model page gives each default with its reason; unit pages toggle the rule
    shown; layer-page thumbnails zoom to twice their size."""
    from selenium.webdriver.common.by import By

    from zfprobe.studies.mining.render import safe_name

    out, _, _ = report
    index = (out / "index.html").read_text()
    assert 'id="defaults"' in index and "rule at relu3" in index and "max-pool switch" in index
    m = json.loads((out / "manifest.json").read_text())
    unit = out / "units" / safe_name("relu3") / f"c{m['layers']['relu3']['unit_pages'][0]:04d}.html"
    browser.get(unit.as_uri())
    shown = lambda: browser.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('img[data-rule]')).filter(function(i){return !i.hidden;})"
        ".map(function(i){return i.getAttribute('data-rule');})")
    everything = shown()
    assert set(everything) == {"deconvnet", "gradient", "guided"}
    browser.find_element(By.CSS_SELECTOR, 'input[name="rule"][value="guided"]').click()
    assert set(shown()) == {"guided"} and len(shown()) == len(everything) // 3
    browser.find_element(By.CSS_SELECTOR, 'input[name="rule"][value="all"]').click()
    assert len(shown()) == len(everything)
    browser.get((out / m["layers"]["relu3"]["page"]).as_uri())
    _load_all_images(browser)
    width = "return document.querySelector('img.thumb').getBoundingClientRect().width"
    natural = browser.execute_script("return document.querySelector('img.thumb').naturalWidth")
    assert browser.execute_script(width) == natural
    browser.find_element(By.ID, "zoom").click()
    assert browser.execute_script(width) == 2 * natural


def test_layer_names_with_slashes_load_their_images(tmp_path, browser):
    """ONNX node names such as '/c2/Conv' become folders '%2Fc2%2FConv' on disk; the pages must
    quote them in src / href, or the browser decodes them back into slashes and finds nothing."""
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "tests"))
    import nets

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))))

    model = tmp_path / "slashes.onnx"
    names = nets.export_onnx(nets._init_(Net(), 0), torch.zeros(1, 3, 32, 32), model)
    layer = names["c2"]
    assert "/" in layer
    out = tmp_path / "rep"
    r = run_cli("report", model, "--layers", layer, "--unit-pages", "1", "--occlusion-images", "0", "-q", "-o", out,
                env_extra={"ZFPROBE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    for page in (out / m["layers"][layer]["page"], out / "index.html"):
        browser.get(page.as_uri())
        assert _load_all_images(browser) == [], page
