"""``zfprobe invariance``: invariance curves under translation, scale and rotation (Fig. 5)."""
from __future__ import annotations

import click

from zfprobe.cli.common import open_probe, preprocessing_from_options, preprocessing_options
from zfprobe.errors import OptionError

TRANSFORMS = ["translate", "translate-x", "translate-y", "scale", "rotate"]


@click.command("invariance")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", "layers", required=True, multiple=True, help="Layer whose feature vector is compared (repeatable; one pass for all).")
@click.option("--transform", "-t", "transforms", multiple=True, type=click.Choice(TRANSFORMS),
              help="Transform (repeatable; translate = vertical and horizontal) [default: translate-y, scale, rotate].")
@click.option("--range", "range_", help="Amounts A:B:STEP (B included) or a,b,c [default: the paper's: translation "
                                         "-60..60 px at 224 px (scaled to the input size), scale 1..1.8, rotation 0..350 deg].")
@click.option("--label", "labels", type=int, multiple=True,
              help="True class: once for all images or once per image [default: top-1 class of each original].")
@click.option("--fill", default="mean", show_default=True,
              help="Colour of uncovered pixels: mean (the preprocessing mean), grey, black, white or a pixel value 0..255.")
@click.option("--batch-size", type=int, help="Images per forward pass [default: sized from --memory].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model, images, layers, transforms, range_, labels, fill, batch_size, progress, preset, input_size, mean, std,
            scale, bgr, resize, device, out_dir):
    """Transform each of IMAGES (files or folders) and plot, against the amount, the distance of
    each LAYER's features to the original's and the probability of the true class; writes
    curves.csv, invariance.png, invariance_raw.png, examples.png, summary.md and manifest.json."""
    from zfprobe.io.image_files import expand_images
    from zfprobe.studies.invariance.compute import invariance
    from zfprobe.studies.invariance.render import NO_CLASS_NOTE
    from zfprobe.studies.occlusion import class_output

    if batch_size is not None and batch_size < 1:
        raise OptionError("--batch-size must be at least 1")
    probe = open_probe(model, input_size, device)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    for layer in layers:
        probe.resolve(layer)
    paths = expand_images(images)
    has_classes = class_output(probe.graph) is not None
    if not has_classes:
        if labels:
            raise OptionError(f"--label needs a class output, and this model has none (output '{(probe.graph.outputs or ['none'])[0]}')")
        click.echo(f"zfprobe: note: {NO_CLASS_NOTE}", err=True)
    result = invariance(probe, paths, list(layers), transforms=list(transforms) or ["translate-y", "scale", "rotate"],
                        ranges=range_, labels=list(labels) or None, fill=fill, preprocessing=prep,
                        batch_size=batch_size, progress=progress)
    files = result.save(out_dir, probe)
    n = sum(len(t.amounts) for t in result.transforms) * len(paths)
    click.echo(f"{n} transformed images ({', '.join(t.describe() for t in result.transforms)}) in "
               f"{result.timings['curves']:.2f} s -> {out_dir} ({len(files)} files)")
