"""Pieces every zfprobe command shares: opening a model, preprocessing options, parsers."""
from __future__ import annotations

import os

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


def has_dynamic_size(model: str) -> bool:
    """True when an ONNX model's image input has unknown spatial dimensions."""
    if not str(model).lower().endswith(".onnx"):
        return False
    try:
        import onnx

        proto = onnx.load(model, load_external_data=False)
    except Exception:  # unreadable: the regular path reports it
        return False
    weights = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if not inputs:
        return False
    dims = inputs[0].type.tensor_type.shape.dim
    return len(dims) == 4 and any(not (d.HasField("dim_value") and d.dim_value > 0) for d in dims[1:])


def image_size_of(path: str) -> str:
    from PIL import Image

    from zfprobe.errors import ImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read image '{path}': {exc}") from None
    return f"{h}x{w}"


def open_probe(model: str, input_size: str | None, device: str = "auto", channels_hint: int | None = None,
               image: str | None = None):
    """``zfprobe.load`` with an optional HxW; a model with a dynamic input size and no
    --input-size takes its size from ``image`` (said on stderr)."""
    import zfprobe

    if input_size is None and image is not None and has_dynamic_size(model):
        input_size = image_size_of(image)
        click.echo(f"zfprobe: note: the model's input size is dynamic; using the image's size {input_size}", err=True)
    size = parse_size(input_size)
    shape = None
    if size is not None:
        shape = (channels_hint, *size) if channels_hint else size
    return zfprobe.load(model, input_shape=shape, device=device)


def default_image(model: str, input_size: str | None, device: str):
    """(probe, image path) when no --image is given: a bundled sample that suits the model."""
    from zfprobe.defaults import PHOTOS, sample_images

    first_photo = sorted(os.path.join(PHOTOS, f) for f in os.listdir(PHOTOS) if f.endswith(".jpg"))[0]
    probe = open_probe(model, input_size, device, image=first_photo)
    return probe, sample_images(probe.preprocessing)[0]


def default_layer(probe, layer: str | None, command: str) -> str:
    from zfprobe.defaults import deepest_layer
    from zfprobe.errors import OptionError

    if layer:
        return layer
    chosen = deepest_layer(probe)
    if chosen is None:
        raise OptionError("the model has no spatial layer the deconvnet can pass; give --layer (see `zfprobe layers`)")
    click.echo(f"zfprobe: no --layer given; using {chosen}, the deepest spatial layer the deconvnet passes", err=True)
    return chosen


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
