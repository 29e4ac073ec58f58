"""Pieces every zfprobe command shares: opening a model, preprocessing options, parsers."""
from __future__ import annotations

import click

from zfprobe.errors import OptionError

RULES = ["deconvnet", "gradient", "guided"]


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


def open_probe(model: str, input_size: str | None, device: str = "auto", channels_hint: int | None = None,
               image: str | None = None):
    """The model as a Probe. A model whose input size is free (a detector's dynamic H x W) takes
    ``--input-size``, else the size of ``image`` when the command has one."""
    import zfprobe
    from zfprobe.errors import DynamicInputSizeError

    size = parse_size(input_size)
    shape = None
    if size is not None:
        shape = (channels_hint, *size) if channels_hint else size
    try:
        return zfprobe.load(model, input_shape=shape, device=device)
    except DynamicInputSizeError:
        image_size = _image_size(image) if shape is None and image else None
        if image_size is None:
            raise
        return zfprobe.load(model, input_shape=image_size, device=device)


def _image_size(path: str) -> tuple[int, int] | None:
    """(H, W) of an image file, or None when it cannot be read (the command reports that later)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - any unreadable file: no size, the image loader gives the error
        return None


def preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize):
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



def preprocessing_options(fn):
    """The options that say how an image becomes the model input (shared by every command)."""
    options = [
        click.option("--preset", type=click.Choice(["imagenet", "caffe", "unit", "raw", "tf"]), help="Preprocessing preset."),
        click.option("--input-size", help="HxW, for models without a fixed input size."),
        click.option("--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (after scaling)."),
        click.option("--std", help="Per-channel std."),
        click.option("--scale", type=float, help="Pixel scale applied before mean/std (e.g. 0.00392 for 1/255)."),
        click.option("--bgr/--rgb", default=None, help="Channel order the model expects."),
        click.option("--resize", type=click.Choice(["crop", "stretch"]), help="How an image is fitted to the input size."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
