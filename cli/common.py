"""Pieces every zfprobe command shares: opening a model, preprocessing options, parsers, and the
one error path (:func:`report_failure`) the click group sends every failure through."""
from __future__ import annotations

import math
import os
import sys

import click

from zfprobe.cli.validation import Number, NumberList, nonempty
from zfprobe.errors import OptionError, ZfprobeError

from zfprobe.engine.rules import RULES  # noqa: F401  (the CLI commands import it from here)


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


def parse_floats(value: str | None, what: str = "value", nonzero: bool = False) -> tuple[float, ...] | None:
    """'0.1,0.2' -> (0.1, 0.2); refuses NaN, infinities and (with ``nonzero``) zeros."""
    if value is None:
        return None
    if isinstance(value, tuple):  # parsed and checked by its option's type (cli/validation.py)
        return value
    try:
        out = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise OptionError(f"cannot read {what} '{value}' as comma-separated numbers") from None
    check_finite(out, what, nonzero)
    return out


def check_finite(values, what: str, nonzero: bool = False) -> None:
    """Refuse NaN and infinite option values (they turn every result into NaN silently)."""
    for v in values if isinstance(values, (tuple, list)) else (values,):
        if not math.isfinite(v):
            raise OptionError(f"{what} must be a finite number, not {v}")
        if nonzero and v == 0:
            raise OptionError(f"{what} must not be 0 (the input is divided by it)")


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
        click.echo(f"zfprobe: note: the model's input size is dynamic; using the image's size "
                   f"{image_size[0]}x{image_size[1]}", err=True)
        return zfprobe.load(model, input_shape=image_size, device=device)


def _image_size(path: str) -> tuple[int, int] | None:
    """(H, W) of an image file, or None when it cannot be read (the command reports that later)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 - any unreadable file: no size, the image loader gives the error
        return None


def default_image(model: str, input_size: str | None, device: str):
    """(probe, image path) when no --image is given: a bundled sample that suits the model."""
    from zfprobe.studies.defaults import PHOTOS, sample_images

    first_photo = sorted(os.path.join(PHOTOS, f) for f in os.listdir(PHOTOS) if f.endswith(".jpg"))[0]
    probe = open_probe(model, input_size, device, image=first_photo)
    return probe, sample_images(probe.preprocessing)[0]


def probe_and_image(model: str, image: str | None, input_size: str | None, device: str):
    """(probe, image path): the given image, or a bundled sample that suits the model (said on
    stderr) when the command got no --image."""
    if image is None:
        probe, image = default_image(model, input_size, device)
        click.echo(f"zfprobe: no --image given; using the bundled sample {image}", err=True)
        return probe, image
    return open_probe(model, input_size, device, image=image), image


def default_layer(probe, layer: str | None, command: str) -> str:
    from zfprobe.studies.defaults import deepest_layer
    from zfprobe.errors import OptionError

    if layer is not None:
        return nonempty(layer, "--layer")
    chosen = deepest_layer(probe)
    if chosen is None:
        raise OptionError("the model has no spatial layer the deconvnet can pass; give --layer (see `zfprobe layers`)")
    click.echo(f"zfprobe: no --layer given; using {chosen}, the deepest spatial layer the deconvnet passes", err=True)
    return chosen


def say_rule(layer: str, choice: dict) -> None:
    """One line on stderr: which rule ran at ``layer`` and why (``choice``: RuleChoice.to_dict()).
    Said after the work succeeded, so an error is always the only line."""
    # the paper's deconvnet where max-pool switches carry the image is the plain case: nothing to say
    if choice["rules_identical"] or not choice["max_pool_switches"]:
        click.echo(f"zfprobe: note: rule {choice['rule']} at {layer}: {choice['reason']}", err=True)


def say_projection_paths(probe, maps: bool = False) -> None:
    """``--verbose``: one line on stderr per projected layer: which program ran (windowed or
    full) and why (the cost model's two multiply-add estimates; whole maps always take the full one)."""
    from zfprobe.engine.windowed import WINDOWED_MAX_FRACTION

    for choice in probe.projection_paths.values():
        if maps:
            path, why = "full", "whole feature maps: windows serve single units"
        elif choice["windowed_macs"] is None:
            path, why = choice["path"], choice["reason"]
        else:
            path = choice["path"]
            why = (f"estimated multiply-adds per seed: windowed {choice['windowed_macs']:.3g}, full "
                   f"{choice['full_macs']:.3g}; windowed runs where <= {WINDOWED_MAX_FRACTION:g} x full")
        click.echo(f"zfprobe: projection at {choice['layer']}: {path} program ({why})", err=True)


def preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize):
    prep = probe.preprocessing
    if prep is None:
        raise OptionError("this model's input is not an image batch [N, C, H, W]; zfprobe cannot visualize it")
    if preset:
        prep = prep.with_preset(preset)
    elif mean is None and std is None and scale is None:
        from zfprobe.io.preprocess import suggested_preset

        guess = suggested_preset(prep)
        if guess:
            h, w = prep.size
            click.echo(f"zfprobe: warning: no --preset given for a 3-channel {h}x{w} model: inputs are scaled by "
                       f"1/255 with no mean/std; ImageNet models usually want --preset {guess} (or write "
                       f'{{"preset": "{guess}"}} into <model>.json)', err=True)
    if scale is not None:
        check_finite(scale, "--scale", nonzero=True)
    for key, value in (("mean", parse_floats(mean, "--mean")), ("std", parse_floats(std, "--std", nonzero=True)),
                       ("scale", scale)):
        if value is not None:
            setattr(prep, key, value)
    prep.validate()
    if bgr is not None:
        prep.channel_order = "BGR" if bgr else "RGB"
    if resize:
        prep.resize = resize
    return prep



def position_option(fn):
    """``--position``: where each channel's strongest unit (per image, when mining) may sit."""
    return click.option("--position", "positions", type=click.Choice(["inside", "any"]), default="inside",
                        show_default=True,
                        help="inside: the strongest unit among those with >= 50% of their receptive field inside "
                             "the image (not lifted by the padding); any: the strongest anywhere.")(fn)


def preprocessing_options(fn):
    """The options that say how an image becomes the model input (shared by every command)."""
    options = [
        click.option("--preset", type=click.Choice(["imagenet", "caffe", "unit", "raw", "tf"]), help="Preprocessing preset."),
        click.option("--input-size", help="HxW, for models without a fixed input size."),
        click.option("--mean", type=NumberList(), help="Per-channel mean, e.g. 0.485,0.456,0.406 (after scaling)."),
        click.option("--std", type=NumberList(nonzero=True), help="Per-channel std."),
        click.option("--scale", type=Number(nonzero=True), help="Pixel scale applied before mean/std (e.g. 0.00392 for 1/255)."),
        click.option("--bgr/--rgb", default=None, help="Channel order the model expects."),
        click.option("--resize", type=click.Choice(["crop", "stretch"]), help="How an image is fitted to the input size."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _say(line: str) -> None:
    try:
        click.echo(_one_line(line), err=True)
    except (OSError, ValueError):
        pass  # stderr is gone; the exit status still tells


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: ``zfprobe: warning: ...`` on one line, the
    same channel as errors (a library's warning included), never a source line."""
    _say(f"zfprobe: warning: {message}")


class Interrupted(BaseException):
    """Carries a KeyboardInterrupt / Terminated past click (which would reword it) to the group."""

    def __init__(self, original: KeyboardInterrupt):
        super().__init__(original)
        self.original = original


def report_failure(exc: BaseException) -> int:
    """Print one line for any failure and return the exit status (2 for anything a user can
    cause or meet; 1, with a request to report it, for a bug; 130 / 143 for SIGINT / SIGTERM)."""
    from zfprobe.io.interrupts import Terminated, interrupted_by, take_notes

    if isinstance(exc, Interrupted):
        exc = exc.original
    if not isinstance(exc, (KeyboardInterrupt, SystemExit, ZfprobeError)) and interrupted_by() is not None:
        exc = interrupted_by()  # e.g. onnxruntime's "initialization failed" when Ctrl-C hit its import
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, (KeyboardInterrupt, click.exceptions.Abort)):
        notes = take_notes()
        what = "; ".join(notes) if notes else "no output was written"
        term = isinstance(exc, Terminated)
        _say(f"zfprobe: {'terminated (SIGTERM)' if term else 'interrupted'}; {what}")
        return 143 if term else 130
    take_notes()
    if isinstance(exc, ZfprobeError):
        _say(f"zfprobe: error: {exc}")
        return exc.exit_code
    if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
        click.echo(exc.ctx.get_help())  # `zfprobe` alone: the help, not an error
        return 0
    if isinstance(exc, click.ClickException):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and isinstance(exc, click.UsageError) else ""
        _say(f"zfprobe: error: {exc.format_message()}{hint}")
        return 2
    if isinstance(exc, BrokenPipeError):  # `zfprobe layers m | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 0
    if isinstance(exc, OSError):
        from zfprobe.io.outputs import os_error_message

        where = f"'{exc.filename}'" if exc.filename else "a file"
        _say("zfprobe: error: " + os_error_message(exc, f"cannot use {where}", writing=False))
        return 2
    if isinstance(exc, MemoryError):
        _say("zfprobe: error: not enough memory for this run; use a smaller --batch-size, --top or input size")
        return 2
    if type(exc).__name__ == "DecompressionBombError":
        _say(f"zfprobe: error: {exc}")
        return 2
    if os.environ.get("ZFPROBE_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    _say(f"zfprobe: error: internal error ({type(exc).__name__}: {exc}); this is a bug in zfprobe, please "
         "report it (ZFPROBE_DEBUG=1 prints the traceback)")
    return 1


def quiet_native_logs() -> None:
    """Native libraries log straight to stderr; zfprobe reports their errors itself."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # onnxruntime: see onnxruntime_backend.quiet_onnxruntime
