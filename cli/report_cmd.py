"""``zfprobe report``: a static HTML site (model, layer, unit and analysis pages) for a model."""
from __future__ import annotations

import click

from zfprobe.cli.common import open_probe, position_option, preprocessing_from_options, preprocessing_options
from zfprobe.cli.validation import nonempty
from zfprobe.errors import OptionError


@click.command("report")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(), required=False)
@click.option("--layers", "-l", "layers", help="Comma-separated layers to mine and show [default: 3 spread over depth].")
@click.option("--limit", type=int, help="Use only the first N images of DATA.")
@click.option("--unit-pages", type=int, default=8, show_default=True,
              help="Channels per layer (the strongest) that get a unit page.")
@click.option("--occlusion-images", type=int, default=1, show_default=True,
              help="Sample images with occlusion maps on each unit page (0: none).")
@click.option("--include", "includes", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="An analysis output folder (any zfprobe command's -o) to add (repeatable).")
@click.option("--with", "with_", help="Analyses to include by name (e.g. occlusion,filters): 'occlusion' adds "
                                      "occlusion maps to the unit pages; any other must be an output folder (or "
                                      "command) inside OUT or given with --include.")
@click.option("--channels", "channels", type=int, default=64, show_default=True,
              help="Channels shown per layer: the strongest (largest mean of their top-9 activations).")
@click.option("--all-channels", is_flag=True, help="Show every channel of each layer (overrides --channels).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@position_option
@preprocessing_options
@click.option("--out", "-o", "out_dir", type=click.Path(), help="Report folder [default: ./zfprobe-report-<model>].")
def command(model, data, layers, limit, unit_pages, occlusion_images, includes, with_, channels, all_channels, quiet,
            positions, preset, input_size, mean, std, scale, bgr, resize, device, out_dir):
    """Write a static site for MODEL (optionally mining DATA, a folder of images or .npy/.npz):
    the layer table and graph, per-layer channel pages (top-9 from mining, dead/weak flagged,
    filter box), unit pages (three rules, occlusion maps) and pages for analysis folders."""
    import os

    from zfprobe.studies.defaults import PHOTOS, output_folder
    from zfprobe.report import ReportOptions, build_report
    from zfprobe.report.folders import find_analyses

    if layers is not None:
        nonempty(layers.replace(",", ""), "--layers")
    out_dir = out_dir or output_folder("report", model)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OptionError(f"the output folder '{out_dir}' is a file; give a folder path with -o")
    if channels < 1:
        raise OptionError("--channels must be at least 1 (--all-channels shows every one)")
    for name, value in (("--limit", limit), ("--unit-pages", unit_pages), ("--occlusion-images", occlusion_images)):
        if value is not None and value < (1 if name == "--limit" else 0):
            raise OptionError(f"{name} must be at least {1 if name == '--limit' else 0}")
    if data is not None and not os.path.exists(data):
        raise OptionError(f"the dataset '{data}' does not exist")
    probe = open_probe(model, input_size, device, image=os.path.join(PHOTOS, "chelsea.jpg"))
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    probe.preprocessing = prep
    if with_:
        present = {n for n, _ in find_analyses(out_dir)} | {m.get("command") for _, m in find_analyses(out_dir)}
        present |= {os.path.basename(os.path.normpath(p)) for p in includes}
        wanted = [w.strip() for w in with_.split(",") if w.strip()]
        if "occlusion" in wanted:  # built in: occlusion maps on the unit pages
            occlusion_images = max(1, occlusion_images)
        missing = [w for w in wanted if w not in present and w != "occlusion"]
        if missing:
            raise OptionError(f"no output of {', '.join(missing)} to include: run e.g. `zfprobe {missing[0]} MODEL ... "
                              f"-o {os.path.join(out_dir, missing[0])}` first, or pass --include FOLDER")
    options = ReportOptions(layers=[l.strip() for l in layers.split(",") if l.strip()] if layers else None, data=data,
                            limit=limit, unit_pages=unit_pages, occlusion_images=occlusion_images,
                            include=list(includes), progress=not quiet, channels=None if all_channels else channels, position=positions)
    meta = build_report(probe, out_dir, options)
    t = meta["timings_s"]
    click.echo(f"report of {len(meta['layers'])} layer(s), {meta['files_count']} files, "
               f"{meta['size_bytes'] / 1e6:.1f} MB in {sum(t.values()):.1f} s "
               f"({', '.join(f'{k} {v:.1f} s' for k, v in t.items())}) -> {os.path.join(out_dir, 'index.html')}")
