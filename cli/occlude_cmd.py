"""``zfprobe occlude``: occlusion sensitivity maps (PAPER.md section 5, Fig. 7)."""
from __future__ import annotations

import click

from zfprobe.cli.common import (default_layer, probe_and_image, preprocessing_from_options,
                                preprocessing_options)
from zfprobe.errors import OptionError


def read_labels(path: str) -> list[str]:
    """A class-name file: one name per line (line k names class k)."""
    from zfprobe.io.labelled import read_text

    names = read_text(path, "class-name file").splitlines()
    while names and not names[-1].strip():
        names.pop()
    if not names:
        raise OptionError(f"the class-name file '{path}' is empty; write one class name per line")
    return names


@click.command("occlude")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--image", "-i", type=click.Path(dir_okay=False),
              help="The input image [default: a bundled sample that suits the model].")
@click.option("--layer", "-l", help="Layer whose strongest feature map is tracked (map b, projection c) "
                                    "[default: the deepest spatial layer the deconvnet passes].")
@click.option("--size", "-s", type=int, default=None, help="Side of the occluding square in pixels [default: 1/7 of the image side].")
@click.option("--stride", "-t", type=int, default=None, help="Step between square positions in pixels [default: size/4].")
@click.option("--label", type=int, help="Target class for the probability map [default: top-1 of the unoccluded image].")
@click.option("--fill", default="grey", show_default=True,
              help="Square fill: grey (pixel 128, normalized like the image), zero (0 in model space), "
                   "mean (the dataset mean) or a pixel value 0..255.")
@click.option("--channel", "-c", type=int, help="Track this feature map instead of the strongest one.")
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
              help="Class names, one per line [default: `labels` in the model's .json sidecar].")
@click.option("--method", type=click.Choice(["auto", "incremental", "plain"]), default="auto", show_default=True,
              help="incremental: recompute only the window the square changes in the early layers (exact).")
@click.option("--no-projection", is_flag=True, help="Skip the deconvnet projection of the strongest map.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Output folder [default: ./zfprobe-occlude-<model>].")
def command(model, image, layer, size, stride, label, fill, channel, labels_file, method, no_projection, progress,
            preset, input_size, mean, std, scale, bgr, resize, device, out_dir):
    """Slide a square over IMAGE; map LAYER's strongest feature map total, the target-class
    probability and the top class per square position; write npz, overlays and a manifest."""
    from zfprobe.studies.occlusion import class_output, occlude
    from zfprobe.studies.occlusion.render import save_result

    from zfprobe.studies.defaults import output_folder

    probe, image = probe_and_image(model, image, input_size, device)
    layer = default_layer(probe, layer, "occlude")
    out_dir = out_dir or output_folder("occlude", model)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    side = min(prep.size)
    size = size if size is not None else max(1, round(side / 7))
    stride = stride if stride is not None else max(1, size // 4)
    names = read_labels(labels_file) if labels_file else None
    has_classes = class_output(probe.graph) is not None
    if not has_classes and label is None:
        click.echo(f"zfprobe: note: the model has no class output (output '{(probe.graph.outputs or ['none'])[0]}'); "
                   "only the activation map is made", err=True)
    result = occlude(probe, image, layer, size=size, stride=stride, label=label, fill=fill, channel=channel,
                     method=method, project=not no_projection, preprocessing=prep, class_names=names,
                     probability=None, progress=progress)
    if names is not None and result.label is not None and len(names) <= result.label:
        click.echo(f"zfprobe: note: the class-name file has {len(names)} names; class {result.label} has none", err=True)
    files = save_result(result, out_dir, probe)
    if result.predictions:
        from zfprobe.io.classes import describe_predictions

        click.echo(f"top-5: {describe_predictions(result.predictions)}")
    n = len(result.rows) * len(result.cols)
    what = f"map {result.channel} of {layer} (unoccluded total {result.base_activation:.4g})"
    if result.label is not None:
        what += f", p(class {result.label}) unoccluded {result.base_probability:.4f}"
    click.echo(f"{n} square positions ({size}px, stride {stride}, {result.method}) in {result.timings['maps']:.2f} s: "
               f"{what} -> {out_dir} ({len(files)} files)")
