"""``zfprobe`` command line: layers, visualize, export-deconv.

Every user error (bad file, unknown layer, unreadable image, ...) is a ``ZfprobeError``: it is
printed as one line and the command exits with status 2, leaving no partial output behind.
"""
from __future__ import annotations

import sys

import click

from zfprobe.errors import OptionError, ZfprobeError

RULES = ["deconvnet", "gradient", "guided"]


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZfprobeError as exc:
            click.echo(f"zfprobe: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("zfprobe: interrupted; no output was written", err=True)
            sys.exit(130)


def parse_size(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        parts = [int(p) for p in value.lower().replace(",", "x").split("x")]
    except ValueError:
        raise OptionError(f"cannot read input size '{value}'; write HxW, e.g. 224x224") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise OptionError(f"cannot read input size '{value}'; write HxW, e.g. 224x224")
    return parts[0], parts[1]


def parse_floats(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise OptionError(f"cannot read '{value}' as comma-separated numbers") from None


def parse_unit(value: str | None) -> tuple[int, tuple[int, ...]] | None:
    if not value:
        return None
    try:
        parts = [int(v) for v in value.split(",")]
    except ValueError:
        raise OptionError(f"cannot read unit '{value}'; write CHANNEL,Y,X") from None
    return parts[0], tuple(parts[1:])


def open_probe(model: str, input_size: str | None, device: str = "auto", channels_hint: int | None = None):
    import zfprobe

    size = parse_size(input_size)
    shape = None
    if size is not None:
        shape = (channels_hint or 3, *size)
    return zfprobe.load(model, input_shape=shape, device=device)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zfprobe")
def cli():
    """Look inside trained CNNs the way Zeiler & Fergus did (deconvnet projections)."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input-size", help="HxW for models whose input size is not fixed.")
@click.option("--channels", "in_channels", type=int, help="Input channels, with --input-size.")
def layers(model, input_size, in_channels):
    """List the layers of MODEL you can probe, with shapes and whether the deconvnet passes."""
    probe = open_probe(model, input_size, "cpu", in_channels)
    rows = [(info.name, info.op_type, "x".join(str(s) for s in info.shape[1:]),
             "yes" if info.invertible else f"no: {info.blocker}") for info in probe.layers()]
    header = ("layer", "op", "output (C x H x W)", "deconvnet")
    widths = [min(48, max(len(r[i]) for r in rows + [header])) for i in range(3)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths + [0])))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths + [0])))
    click.echo(f"input: {probe.input_name} {list(probe.input_shape)}")


def _preprocessing(probe, preset, mean, std, scale, bgr, resize):
    prep = probe.preprocessing
    if prep is None:
        raise OptionError("this model's input is not an image batch [N, C, H, W]; zfprobe cannot visualize it")
    if preset:
        prep = prep.with_preset(preset)
    for key, value in (("mean", parse_floats(mean)), ("std", parse_floats(std)), ("scale", scale)):
        if value is not None:
            setattr(prep, key, value)
    if bgr is not None:
        prep.channel_order = "BGR" if bgr else "RGB"
    if resize:
        prep.resize = resize
    return prep


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--image", "-i", required=True, type=click.Path(dir_okay=False), help="The input image.")
@click.option("--layer", "-l", required=True, help="Layer name (see `zfprobe layers`).")
@click.option("--channel", "-c", "channels", type=int, multiple=True, help="Channel to project (repeatable).")
@click.option("--top", "-n", type=int, help="Also project the N channels with the strongest activation.")
@click.option("--unit", help="One unit CHANNEL,Y,X instead of each channel's strongest position.")
@click.option("--mode", type=click.Choice(["unit", "map"]), default="unit", show_default=True,
              help="unit: the strongest position of each channel; map: the whole feature map.")
@click.option("--rule", type=click.Choice(RULES), default="deconvnet", show_default=True)
@click.option("--lrn", type=click.Choice(["identity", "gradient"]), default="identity", show_default=True,
              help="How LRN layers are reversed (the paper: identity).")
@click.option("--preset", type=click.Choice(["imagenet", "caffe", "unit", "raw", "tf"]), help="Preprocessing preset.")
@click.option("--input-size", help="HxW, for models without a fixed input size.")
@click.option("--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (after scaling).")
@click.option("--std", help="Per-channel std.")
@click.option("--scale", type=float, help="Pixel scale applied before mean/std (e.g. 0.00392 for 1/255).")
@click.option("--bgr/--rgb", default=None, help="Channel order the model expects.")
@click.option("--resize", type=click.Choice(["crop", "stretch"]), help="How the image is fitted to the input size.")
@click.option("--percentile", type=float, help="Scale each projection by this percentile of |p| (contrast).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def visualize(model, image, layer, channels, top, unit, mode, rule, lrn, preset, input_size, mean, std, scale, bgr,
              resize, percentile, device, out_dir):
    """Project units of LAYER for IMAGE to pixel space; write PNGs, a contact sheet and a manifest."""
    probe = open_probe(model, input_size, device)
    prep = _preprocessing(probe, preset, mean, std, scale, bgr, resize)
    position = None
    channels = list(channels)
    parsed = parse_unit(unit)
    if parsed:
        channels, position = [parsed[0]] + channels, parsed[1]
    if percentile is not None and not 0 < percentile <= 100:
        raise OptionError("--percentile must be in (0, 100]")
    result = probe.visualize(image, layer, channels=channels, top=top, mode=mode, position=position, rule=rule,
                             lrn=lrn, percentile=percentile, preprocessing=prep)
    files = result.save(out_dir, probe)
    click.echo(f"{len(result.seeds)} projection(s) of {layer} ({rule}) in "
               f"{sum(result.timings.values()):.2f} s -> {out_dir} ({len(files)} files; see contact_sheet.png)")


@cli.command("export-deconv")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--layer", "-l", required=True)
@click.option("--rule", type=click.Choice(RULES), default="deconvnet", show_default=True)
@click.option("--lrn", type=click.Choice(["identity", "gradient"]), default="identity", show_default=True)
@click.option("--input-size", help="HxW, for models without a fixed input size.")
@click.option("--out", "-o", "out_path", required=True, type=click.Path(dir_okay=False))
def export_deconv(model, layer, rule, lrn, input_size, out_path):
    """Save the deconvnet of LAYER as an ONNX model (inputs: image, zf_seed, zf_seed_image)."""
    probe = open_probe(model, input_size, "cpu")
    probe.export_deconv(layer, out_path, rule, lrn)
    click.echo(f"deconvnet of {layer} ({rule}) -> {out_path}")


def main() -> None:
    cli(prog_name="zfprobe")


if __name__ == "__main__":
    main()
