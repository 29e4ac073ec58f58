"""``zfprobe correspondence``: do the same parts change the same features in every image? (Table 1)"""
from __future__ import annotations

import click

from zfprobe.cli.common import open_probe, preprocessing_from_options, preprocessing_options


@click.command("correspondence")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--parts", "parts_file", required=True, type=click.Path(dir_okay=False),
              help='Part boxes per image: JSON {"img.png": {"left_eye": [x0, y0, x1, y1], ...}} or CSV '
                   "image,part,x0,y0,x1,y1 (pixels of the image file).")
@click.option("--layer", "-l", "layers", required=True, multiple=True, help="Layer to compare at (repeatable; one pass).")
@click.option("--random", "n_random", type=int, default=10, show_default=True,
              help="Random squares (the same in every image) drawn as the baseline.")
@click.option("--size", "-s", type=int, help="Side of the occluding square in pixels [default: the median part box side].")
@click.option("--fill", default="grey", show_default=True,
              help="Square fill: grey (pixel 128, normalized like the image), zero, mean or a pixel value 0..255.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random squares.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model, images, parts_file, layers, n_random, size, fill, seed, progress, preset, input_size, mean, std,
            scale, bgr, resize, device, out_dir):
    """Occlude each part of PARTS in every one of IMAGES (files or folders) and measure, per LAYER,
    how consistently the features change (Delta, lower = more consistent) against random squares;
    writes table.csv, table.md, parts.png, delta.png, summary.md and manifest.json."""
    from zfprobe.studies.correspondence.compute import correspondence
    from zfprobe.studies.correspondence.render import table_md
    from zfprobe.io.image_files import expand_images

    probe = open_probe(model, input_size, device)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    for layer in layers:
        probe.resolve(layer)
    paths = expand_images(images)
    result = correspondence(probe, paths, parts_file, list(layers), size=size, fill=fill, random=n_random, seed=seed,
                            preprocessing=prep, progress=progress)
    files = result.save(out_dir, probe)
    click.echo(table_md(result), nl=False)
    click.echo(f"{len(paths)} images, {len(result.parts)} parts, {len(result.random_squares)} random squares "
               f"({result.size}px) in {result.timings['delta']:.2f} s -> {out_dir} ({len(files)} files)")
