"""Build the static report: model page, layer pages, unit pages, analysis pages.

Stages (each timed, one progress bar over all): mining (top-9 per channel over the data, its
checkpoint kept in a cache folder keyed by the model's sha256, so a rerun reuses a finished
pass), projections of every kept unit (thumbnails for layer pages), unit pages for the
strongest channels (the top-9 large under the three rules, occlusion maps of sample images),
analysis pages (any output folder inside the report folder or given with --include), and the
HTML. Everything is written through :class:`zfprobe.io.outputs.OutputStage`: all or nothing.
"""
from __future__ import annotations

import json
import os

import time
from dataclasses import dataclass, field

import numpy as np

from zfprobe.errors import OptionError
from zfprobe.report.html import ASSETS, esc, graph_svg, page, rule_toggle, table, url

from zfprobe.engine.rules import RULES
THUMB_TILE = 64   # px per tile in the layer-page thumbnails (x2 with the page's zoom button)
UNIT_TILE = 128   # px per tile on unit pages
HEAT_SIZE = 192   # px of an occlusion map on a unit page


@dataclass
class ReportOptions:
    layers: list[str] | None = None
    data: str | None = None
    limit: int | None = None
    k: int = 9
    unit_pages: int = 8          # channels per layer that get a unit page (the strongest)
    occlusion_images: int = 1    # sample images with occlusion maps on each unit page
    include: list[str] = field(default_factory=list)
    per_page: int = 64
    progress: bool = True
    channels: int | None = 64    # channels per layer shown (the strongest); None: every one (--all-channels)
    position: str = "inside"     # where each image's strongest unit may sit when mining (--position)


def cache_root() -> str:
    return os.environ.get("ZFPROBE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "zfprobe")


def _png(image: np.ndarray) -> bytes:
    from zfprobe.report.thumbnails import png_bytes

    return png_bytes(image)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """A unit-page tile at ``size`` px, resized bilinearly (display only, docs/legibility.md)."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _heatmap(values: np.ndarray, image: np.ndarray, size: int) -> np.ndarray:
    """An occlusion map (low = the square hurt most) as a colour image blended over the photo."""
    from matplotlib import colormaps
    from PIL import Image

    v = np.asarray(values, np.float64)
    lo, hi = float(np.nanmin(v)), float(np.nanmax(v))
    norm = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    rgb = (colormaps["viridis"](norm)[..., :3] * 255).astype(np.uint8)
    heat = np.asarray(Image.fromarray(rgb).resize((size, size), Image.NEAREST), np.float32)
    base = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)
    return np.round(0.65 * heat + 0.35 * base).astype(np.uint8)


class ReportBuilder:
    def __init__(self, probe, out_dir: str, options: ReportOptions, log=None):
        from zfprobe.studies.defaults import spread_layers

        self.probe, self.out_dir, self.opt = probe, out_dir, options
        self.log = log or (lambda m: None)
        self.prep = probe.preprocessing
        if self.prep is None:
            raise OptionError("this model's input is not an image batch [N, C, H, W]; zfprobe cannot report on it")
        self.layers = list(options.layers or spread_layers(probe))
        if not self.layers:
            raise OptionError("the model has no spatial layer the deconvnet can pass; give --layers")
        for layer in self.layers:
            probe.resolve(layer)
            probe.deconv_program(layer)
        self.timings: dict[str, float] = {}
        self.sha = None

    # -- helpers ---------------------------------------------------------------------------
    def _timed(self, stage: str, start: float) -> None:
        from zfprobe.io.memory import release_freed_memory

        self.timings[stage] = round(self.timings.get(stage, 0.0) + time.perf_counter() - start, 3)
        release_freed_memory()

    def _bar(self, total: int):
        from tqdm import tqdm

        return tqdm(total=total, desc="report", unit="step", disable=not self.opt.progress, leave=False, dynamic_ncols=True)

    # -- build -----------------------------------------------------------------------------
    def build(self) -> dict:
        from zfprobe.io.datasets import open_dataset
        from zfprobe.studies.defaults import sample_dataset, sample_images
        from zfprobe.studies.mining.compute import mine
        from zfprobe.studies.mining.render import safe_name
        from zfprobe.io.outputs import OutputStage
        from zfprobe.report.folders import analysis_page, find_analyses
        from zfprobe.io.provenance import model_sha256
        from zfprobe.report.thumbnails import strongest_channels, write_thumbnails

        probe, opt = self.probe, self.opt
        t0 = time.perf_counter()
        self.sha = model_sha256(probe)
        data = opt.data or sample_dataset(self.prep)
        dataset = open_dataset(data, self.prep, probe.input_shape)
        if len(dataset) == 0:
            raise OptionError(f"the dataset '{data}' holds no images")
        n_samples = max(0, opt.occlusion_images)
        if opt.data is None:  # (name, image path or preprocessed array) for the occlusion maps
            samples = [(p, p) for p in sample_images(self.prep)[:n_samples]]
        else:
            samples = [(dataset.name(i), tuple(dataset.load(i)[:2])) for i in range(min(len(dataset), n_samples))]
        cache = os.path.join(cache_root(), "report", (self.sha or "nohash")[:16])
        os.makedirs(cache, exist_ok=True)
        self.cache = cache
        self._timed("setup", t0)

        includes = [(os.path.basename(os.path.normpath(p)), p) for p in opt.include]
        for name, path in includes:
            if not os.path.isfile(os.path.join(path, "manifest.json")):
                raise OptionError(f"--include '{path}' is not a zfprobe output folder (no manifest.json)")
        existing = find_analyses(self.out_dir)
        total = 1 + len(self.layers) * 2 + len(includes) + len(existing) + 1
        bar = self._bar(total)
        with OutputStage(self.out_dir) as stage:
            # mining: one pass for every layer; checkpoint keyed by the model hash
            t = time.perf_counter()
            bar.set_description_str(f"report: mining {', '.join(self.layers)}")
            result = mine(probe, dataset, self.layers, k=opt.k, state_path=self._mine_state(dataset),
                          resume=True, limit=opt.limit, progress=False, position=opt.position)
            if result.images_seen - len(result.skipped) == 0:
                raise OptionError(f"no image of '{data}' could be read")
            self._timed("mining", t)
            bar.update(1)
            layer_rows = {}
            for layer in self.layers:
                t = time.perf_counter()
                d = safe_name(layer)
                bar.set_description_str(f"report: projections {layer}")
                shown = strongest_channels(result.layers[layer], opt.channels)
                kept = dict.fromkeys(self._unit_channels(result, layer, shown))
                pics = write_thumbnails(stage, probe, result, layer, d, cache, self.sha, THUMB_TILE, channels=shown,
                                        keep=kept)
                self._timed("projections", t)
                bar.update(1)
                t = time.perf_counter()
                bar.set_description_str(f"report: unit pages {layer}")
                units = self._unit_pages(stage, result, layer, pics, d, samples, kept)
                self._timed("unit_pages", t)
                t = time.perf_counter()
                self._layer_page(stage, layer, pics, d, units, result)
                layer_rows[layer] = (d, pics, units)
                getattr(probe.backend, "drop_sessions", lambda: None)()  # this layer's programs are done
                self._timed("layer_pages", t)
                bar.update(1)
            bar.set_description_str("report: analysis pages")
            t = time.perf_counter()
            analyses = []
            for name, path in includes:
                for root, _, files in os.walk(path):
                    for f in files:
                        full = os.path.join(root, f)
                        rel = os.path.relpath(full, path)
                        with open(full, "rb") as fh:
                            stage.write_bytes(f"{name}/{rel}", fh.read())
                with open(os.path.join(path, "manifest.json")) as f:
                    analyses.append((name, json.load(f), path))
                bar.update(1)
            for name, manifest in existing:
                if name not in {n for n, _ in includes}:
                    analyses.append((name, manifest, os.path.join(self.out_dir, name)))
                bar.update(1)
            links = []
            for name, manifest, path in analyses:
                root = os.path.dirname(path)
                title, body = analysis_page(root, name, manifest)
                stage.write_bytes(f"analyses/{name}.html", page(title, body, depth=1).encode())
                links.append((name, manifest.get("command", "?")))
            self._timed("analysis_pages", t)
            t = time.perf_counter()
            bar.set_description_str("report: model page and manifest")
            self._model_page(stage, layer_rows, links, result, data)
            for f in ("style.css", "report.js"):
                with open(os.path.join(ASSETS, f), "rb") as fh:
                    stage.write_bytes(f"assets/{f}", fh.read())
            meta = self._manifest(result, data, layer_rows, links)
            meta["files"] = stage.files + ["manifest.json"]  # every file: a rerun removes pages no longer made
            stage.write_json("manifest.json", meta)
            bar.update(1)
            self._timed("html", t)
            final = stage.commit()
        bar.close()
        meta["size_bytes"] = sum(os.path.getsize(f) for f in final if os.path.isfile(f))
        meta["files_count"] = len(final)
        meta["timings_s"] = self.timings
        return meta

    def _mine_state(self, dataset) -> str:
        """The mining checkpoint of this model (the cache folder), data, layers, k, limit and position rule: a
        rerun of the same report resumes a finished pass (no forward pass at all), and reports
        over other data or layers keep their own."""
        import hashlib

        key = hashlib.sha256(json.dumps([dataset.fingerprint(), self.layers, self.opt.k, self.opt.limit, self.opt.position],
                                        default=str).encode()).hexdigest()[:24]
        return os.path.join(self.cache, f"mine-state-{key}.npz")

    # -- pages -----------------------------------------------------------------------------
    def _unit_channels(self, result, layer, shown) -> list[int]:
        """The ``unit_pages`` strongest live channels among those ``shown`` (strongest first)."""
        from zfprobe.studies.mining.render import channel_status

        top = result.layers[layer]
        best = top.values[:, 0]
        status = channel_status(top)
        shown = set(shown)
        live = [int(c) for c in np.argsort(-best, kind="stable") if int(c) in shown and status[int(c)] != "dead"
                and np.isfinite(best[c])]
        return live[: self.opt.unit_pages]

    def _unit_pages(self, stage, result, layer, pics, d, samples, kept=None) -> dict[int, str]:
        """Unit pages for the ``unit_pages`` strongest live channels of ``layer``. ``kept``: the
        thumbnails' tiles of those channels under the layer's rule (channel -> tiles or None),
        reused instead of projecting them again."""
        from zfprobe.engine.rules import LRN_IDENTITY
        from zfprobe.io.display import masked_from_tile
        from zfprobe.io.pictures import DEFAULT_PERCENTILE
        from zfprobe.studies.mining.render import projection_tiles

        from zfprobe.report.thumbnails import CachedFiles, unit_cache_folder

        top = result.layers[layer]
        chans = self._unit_channels(result, layer, pics.channels)
        if not chans:
            return {}
        units = top.units(chans)
        # a rerun with the same model, data, layer and pages copies the pictures from the cache
        store = CachedFiles(stage, unit_cache_folder(self.cache, self.sha, layer, result,
                                                     [chans, [n for n, _ in samples], UNIT_TILE, list(RULES)]))
        views = ("patch",) + RULES + ("masked",)  # masked: the patch weighted by the default rule's |p|
        rels = [f"units/{d}/c{u.channel:04d}_r{u.rank}_{what}.png" for u in units for what in views]
        rels += [f"units/{d}/c{c:04d}_occlusion{i}.png" for c in chans for i in range(len(samples))]
        fresh = not store.complete(rels)
        tiles: dict[tuple[int, int], dict] = {(u.channel, u.rank): {"unit": u} for u in units}
        kept = kept or {}
        reuse = fresh and all(kept.get(c) is not None for c in chans)
        if reuse:
            for c in chans:
                for unit, proj, patch in kept[c]:
                    tiles[(c, unit.rank)].update({pics.rule: proj, "patch": patch})
        for rule in RULES if fresh else ():
            if reuse and rule == pics.rule:
                continue
            # the tiles as the thumbnails draw them (display only: at most image-sized, de-aliased)
            for unit, proj, patch in projection_tiles(self.probe, result.dataset, layer, units, rule, LRN_IDENTITY,
                                                      DEFAULT_PERCENTILE):
                tiles[(unit.channel, unit.rank)].update({rule: proj, "patch": patch})
        for entry in tiles.values() if fresh else ():
            entry["masked"] = masked_from_tile(entry["patch"], entry[pics.rule])
        occlusions = self._occlusions(layer, chans, samples) if fresh else \
            {c: [(name, None) for name, _ in samples] for c in chans}
        out = {}
        for c in chans:
            rows = []
            for u in top.entries(c):
                e = tiles[(c, u.rank)]
                cells = [str(u.rank + 1), f"{u.value:.4g}", esc(result.dataset.name(u.image)) + f"<br>at {esc(u.position)}"]
                for what in views:
                    rel = f"units/{d}/c{c:04d}_r{u.rank}_{what}.png"
                    store.write(rel, _png(_resize(e[what], UNIT_TILE))) if fresh else store.copy(rel)
                    tag = f' data-rule="{what}"' if what in RULES else ""
                    cells.append(f'<img src="../../{url(rel)}" alt="{esc(what)} of channel {c}, rank {u.rank + 1}" '
                                 f'width="{UNIT_TILE}" height="{UNIT_TILE}" loading="lazy"{tag}>')
                rows.append(cells)
            body = (f'<p><a href="../../layers/{url(d)}.html">back to layer {esc(layer)}</a></p>'
                    f"<h2>Top {len(rows)} images</h2><p class=\"note\">Image patch at the unit's receptive field and "
                    "its projection under each rule (grey = 0; s = 99th percentile of the non-zero |p| per tile; "
                    "shown low-passed at 2 px and enlarged bilinearly), and the patch weighted by the normalized "
                    f"|projection| under the default rule ({esc(pics.rule)}).</p>"
                    + rule_toggle(pics.rule, pics.rule_reason)
                    + table(["rank", "value", "image", "patch", *RULES, "masked patch"], rows, raw=True, caption=f"channel {c} of {layer}"))
            occ = []
            for i, (name, heat) in enumerate(occlusions.get(c, [])):
                rel = f"units/{d}/c{c:04d}_occlusion{i}.png"
                store.write(rel, _png(heat)) if fresh else store.copy(rel)
                h, w = heat.shape[:2] if heat is not None else (HEAT_SIZE, HEAT_SIZE)
                occ.append(f'<figure><img src="../../{url(rel)}" alt="occlusion map of channel {c} on {esc(os.path.basename(name))}" '
                           f'width="{w}" height="{h}"><figcaption>{esc(os.path.basename(name))}: total activation of '
                           f'channel {c} with a grey square at each position (dark = the square removes the most)</figcaption></figure>')
            if occ:
                body += "<h2>Occlusion maps</h2>" + "".join(occ)
            rel = f"units/{d}/c{c:04d}.html"
            stage.write_bytes(rel, page(f"{layer} channel {c}", body, depth=2, script=True).encode())
            out[c] = rel
        return out

    def _occlusions(self, layer, chans, samples) -> dict[int, list[tuple[str, np.ndarray]]]:
        """Per channel, (sample name, occlusion map over the photo) for each sample image. One
        occlusion pass per image serves every channel: the pass computes the layer's per-channel
        totals at each position anyway (``occlusion_maps``), so ``unit_pages`` channels cost one
        pass, not one each (EfficientNet-Lite0, 3 layers x 8 channels: 3 passes of about 4 s instead of
        24 taking 45 s)."""
        from zfprobe.studies.occlusion import occlusion_maps
        from zfprobe.studies.occlusion.options import fill_values

        out: dict[int, list] = {c: [] for c in chans}
        side = min(self.prep.size)
        size = max(1, round(side / 7))
        for name, image in samples:  # a path, or (display, preprocessed array) of a dataset image
            display, x = image if isinstance(image, tuple) else self.probe.load_input(image, self.prep)[:2]
            fill, _ = fill_values("grey", self.prep, x.shape[3] if self.prep.layout == "NHWC" else x.shape[1])
            totals, _, _, _, _ = occlusion_maps(self.probe, x, layer, size, max(1, size // 2), fill,
                                                channels_last=self.prep.layout == "NHWC")
            for c in chans:
                out[c].append((name, _heatmap(totals[:, :, c].astype(np.float32), display, HEAT_SIZE)))
        return out

    def _layer_page(self, stage, layer, pics, d, units, result) -> None:
        figures = []
        strongest = result.layers[layer].values[:, 0]
        for c in pics.channels:
            status = pics.status.get(c, "")
            rel = f"img/{d}/c{c:04d}.png"  # written by write_thumbnails
            badge = f' <span class="badge {status}">{status}</span>' if status else ""
            best = "never active" if status == "dead" else f"max {float(strongest[c]):.3g}"
            img = (f'<img class="thumb" src="../{url(rel)}" loading="lazy" alt="channel {c}: top {result.k} projections '
                   f'(left) and image patches (right){", dead" if status == "dead" else ""}">')
            if c in units:
                img = f'<a href="../{url(units[c])}">{img}</a>'
            figures.append(f'<figure class="ch" data-channel="{c}" data-status="{status}">{img}'
                           f"<figcaption>channel {c}{badge} - {best}</figcaption></figure>")
        n_dead = sum(1 for c in pics.channels if pics.status.get(c) == "dead")
        n_weak = sum(1 for c in pics.channels if pics.status.get(c) == "weak")
        total = result.layers[layer].channels
        shown = f"{total} channels" if len(pics.channels) == total else \
            (f"the {len(pics.channels)} strongest of {total} channels (largest mean of their top-{result.k} "
             "activations; build with --all-channels for every one)")
        body = (f'<p>{shown}; receptive field {"x".join(map(str, pics.rf_size))}; '
                f'{n_dead} dead (never active on the data), {n_weak} weak. Each block: the top {result.k} '
                f'projections ({esc(pics.rule)}) | the image patches. Channels with a unit page are links.</p>'
                f'<p class="note">Rule: {esc(pics.rule)}, because {esc(pics.rule_reason)}.</p>'
                '<div class="pager"><label for="filter">Filter channels</label>'
                '<input id="filter" type="search" placeholder="e.g. 12, 0-15, dead, weak" aria-describedby="filterhelp">'
                '<span id="filterhelp" class="note">channel numbers, ranges, "dead", "weak" or "alive"</span></div>'
                '<div class="pager"><button id="zoom" type="button" aria-pressed="false">Zoom thumbnails x2</button>'
                '<span class="note">each block: 9 projections (left) | 9 image patches (right), '
                f'{THUMB_TILE} px per tile; click a linked block for its unit page</span></div>'
                '<div class="pager"><button id="prev" type="button">Previous</button><span id="pageinfo" aria-live="polite"></span>'
                '<button id="next" type="button">Next</button></div>'
                f'<div id="channels" class="grid" data-per-page="{self.opt.per_page}">{"".join(figures)}</div>')
        stage.write_bytes(f"layers/{d}.html", page(f"Layer {layer}", body, depth=1, script=True).encode())

    def _model_page(self, stage, layer_rows, links, result, data) -> None:
        from zfprobe.engine.receptive_field import describe, receptive_fields

        probe = self.probe
        infos = probe.layers()
        rfs = receptive_fields(probe.graph, [i.tensor for i in infos], self.prep.layout)
        rows = []
        for info in infos:
            rf = describe(rfs[info.tensor]) if info.tensor in rfs else ("-", "-")
            name = esc(info.name)
            if info.name in layer_rows:
                name = f'<a href="layers/{url(layer_rows[info.name][0])}.html">{name}</a>'
            rows.append([name, esc(info.op_type), esc("x".join(map(str, info.shape[1:]))), esc(rf[0]), esc(rf[1]),
                         "yes" if info.invertible else esc(f"no: {info.blocker}")])
        prep = self.prep.to_dict()
        mined = "".join(f'<li><a href="layers/{url(d)}.html">{esc(layer)}</a> ({len(p.channels)} channels, '
                        f'{sum(1 for s in p.status.values() if s == "dead")} dead)</li>' for layer, (d, p, _) in layer_rows.items())
        analyses = "".join(f'<li><a href="analyses/{esc(n)}.html">{esc(n)}</a> ({esc(c)})</li>' for n, c in links) \
            or '<li class="note">none: put zfprobe output folders inside this report folder or pass --include</li>'
        s = result.summary()
        predictions = self._predictions(result.dataset)
        body = ("<h2>Model</h2>" + table(["", ""], [["file", probe.source], ["sha256", self.sha or "-"],
                                                     ["input", f"{probe.input_name} {list(probe.input_shape)}"],
                                                     ["dataset", f"{data} ({s['images_used']} images used)"]])
                + "<h2>Preprocessing</h2>" + table(list(prep.keys()), [list(prep.values())])
                + (("<h2>Top-5 predictions</h2>" + table(["image", "top-5: class name probability"], predictions))
                   if predictions else "")
                + '<h2 id="defaults">Defaults and why</h2>' + table(["what", "choice", "why"], self._defaults(layer_rows))
                + "<h2>Graph</h2>" + graph_svg([(n.name, n.op_type) for n in probe.graph.nodes])
                + f'<h2 id="mined">Mined layers</h2><ul>{mined}</ul>'
                + f'<h2 id="analyses">Analyses</h2><ul>{analyses}</ul>'
                + '<h2 id="layers">Layers</h2>' + table(["layer", "op", "output", "RF size", "RF stride", "deconvnet"], rows, raw=True))
        stage.write_bytes("index.html", page(f"zfprobe report: {os.path.basename(probe.source or 'model')}", body).encode())

    def _defaults(self, layer_rows) -> list[list[str]]:
        """One row per default the report took, with its reason (shown on the model page)."""
        from zfprobe.io.pictures import describe_mapping, DEFAULT_PERCENTILE
        from zfprobe.io.preprocess import suggested_preset

        rows = []
        for layer, (_, pics, _) in layer_rows.items():
            rows.append([f"rule at {layer}", pics.rule, pics.rule_reason])
        rows.append(["layers", ", ".join(layer_rows), "given with --layers" if self.opt.layers else
                     "3 layers spread over depth (about 1/3, 2/3 and the deepest the deconvnet passes)"])
        guess = suggested_preset(self.prep)
        rows.append(["preprocessing", "from <model>.json" if self.prep.origin == "sidecar" else "from the input shape",
                     f"no preset given; ImageNet models usually want --preset {guess}" if guess else
                     "the model's sidecar or the command line"])
        where = ("among the units with >= 50% of their receptive field inside the image"
                 if self.opt.position == "inside" else "anywhere (--position any)")
        rows.append(["units", f"top {self.opt.k} images per channel, each at its strongest position {where}",
                     "the paper's Fig. 2; border units lifted by the zero padding do not win (docs/legibility.md)"
                     if self.opt.position == "inside" else "the paper's Fig. 2"])
        rows.append(["display", describe_mapping(DEFAULT_PERCENTILE) + "; low-passed at 2 px, enlarged bilinearly",
                     "robust contrast; the pixel checkerboard of strided reversals removed (display only; "
                     "see docs/legibility.md)"])
        return rows  # table() escapes the cells

    def _predictions(self, dataset, n: int = 4) -> list[list[str]]:
        """Rows (image, its top-5 classes) for the first ``n`` images, when the model classifies."""
        from zfprobe.io.classes import describe_predictions

        rows = []
        for i in range(min(n, len(dataset))):
            try:
                x = dataset.load(i)[1]
            except Exception:  # noqa: BLE001 - an unreadable image is reported by the mining pass
                continue
            preds = self.probe.predictions(x)
            if preds is None:
                return []
            rows.append([esc(os.path.basename(str(dataset.name(i)))), esc(describe_predictions(preds))])
        return rows

    def _manifest(self, result, data, layer_rows, links) -> dict:
        from zfprobe.io.provenance import __version__
        from zfprobe.io.pictures import describe_mapping, DEFAULT_PERCENTILE

        probe = self.probe
        return {"zfprobe_version": __version__, "command": "report",
                "model": {"path": probe.source, "sha256": self.sha, "input": probe.input_name,
                          "input_shape": list(probe.input_shape)},
                "dataset": data, "mining": result.summary(), "preprocessing": self.prep.to_dict(),
                "display": describe_mapping(DEFAULT_PERCENTILE) + "; display only: low-passed at 2 px, enlarged "
                           "bilinearly, fields larger than the image shown image-sized about the unit",
                "position": self.opt.position,
                "layers": {layer: {"page": f"layers/{d}.html", "channels": len(p.channels),
                                   "channels_total": result.layers[layer].channels, "channels_shown": p.channels,
                                   "dead_channels": [c for c, s in p.status.items() if s == "dead"],
                                   "weak_channels": [c for c, s in p.status.items() if s == "weak"],
                                   "unit_pages": sorted(u)} for layer, (d, p, u) in layer_rows.items()},
                "analyses": [n for n, _ in links], "timings_s": self.timings}


def build_report(probe, out_dir: str, options: ReportOptions | None = None, log=None) -> dict:
    """Write the report for ``probe`` into ``out_dir``; returns its manifest (with size and timings)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OptionError(f"the output folder '{out_dir}' is a file")
    return ReportBuilder(probe, out_dir, options or ReportOptions(), log).build()


__all__ = ["build_report", "ReportOptions", "cache_root"]

