"""``zfprobe`` command line: layers, visualize, export-deconv.

Every user error (bad file, unknown layer, unreadable image, ...) is a ``ZfprobeError``: it is
printed as one line and the command exits with status 2, leaving no partial output behind.
"""
from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import click

from zfprobe.engine.rules import AUTO, DECONVNET, LRN_IDENTITY, LRN_MODES, RULE_CHOICES
from zfprobe.cli.common import (RULES, Interrupted, default_layer, one_line_warning, open_probe, probe_and_image, parse_unit,
                                position_option, preprocessing_from_options, preprocessing_options, quiet_native_logs,
                                report_failure, say_projection_paths, say_rule)
from zfprobe.cli.validation import checked_params
from zfprobe.errors import OptionError
from zfprobe.io.interrupts import install_handlers, take_notes
from zfprobe.io.outputs import check_output_file, check_output_path, output_lock
from zfprobe.io.pictures import DEFAULT_PERCENTILE

# Commands that live in their own modules: every cli/<name>_cmd.py defines ``command`` and is
# registered here, so adding a command means adding one file.
COMMAND_MODULES = sorted(p.stem for p in Path(__file__).parent.glob("*_cmd.py"))


class _Group(click.Group):
    """The one error path: every failure ends as one line ``zfprobe: error: ...`` (exit 2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        install_handlers()
        quiet_native_logs()
        take_notes()  # notes of an earlier invocation in this process do not belong to this one
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning  # never Python's two-line format with a source line
            try:
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
                code = code if isinstance(code, int) else 0
            except BaseException as exc:  # noqa: BLE001 - this is the top of the program
                code = report_failure(exc)
        if not standalone_mode:
            return code
        sys.exit(code or 0)

    def add_command(self, cmd, name=None):
        from zfprobe.cli.memory_option import add_memory_option

        _check_outputs_first(cmd)
        add_memory_option(cmd)
        checked_params(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # click would turn it into Abort and print a blank line
            raise Interrupted(exc) from None


def _check_outputs_first(cmd: click.Command) -> None:
    """Every command's output option is checked before the command's work starts: ``out_dir``
    (a folder) with check_output_path, and locked for the whole run (output_lock); ``out_path``
    (a file) with check_output_file."""
    callback = cmd.callback
    if callback is None or getattr(callback, "_zfprobe_checked", False):
        return

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        if kwargs.get("out_path") is not None:
            check_output_file(kwargs["out_path"])
        if "out_dir" in kwargs and kwargs["out_dir"] is None and kwargs.get("model"):
            from zfprobe.studies.defaults import output_folder  # without -o: a named folder, checked and locked too

            kwargs["out_dir"] = output_folder(cmd.name, kwargs["model"])
        if kwargs.get("out_dir") is None:
            return callback(*args, **kwargs)
        check_output_path(kwargs["out_dir"])
        with output_lock(kwargs["out_dir"]):  # one run per output folder, from start to publish
            return callback(*args, **kwargs)

    checked._zfprobe_checked = True
    cmd.callback = checked


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
    from zfprobe.engine.receptive_field import describe, receptive_fields

    probe = open_probe(model, input_size, "cpu", in_channels)
    infos = probe.layers()
    layout = probe.preprocessing.layout if probe.preprocessing else None
    rfs = receptive_fields(probe.graph, [info.tensor for info in infos], layout)
    rf_cols = [describe(rfs[info.tensor]) if info.tensor in rfs else ("-", "-") for info in infos]
    rows = [(info.name, info.op_type, "x".join(str(s) for s in info.shape[1:]), rf[0], rf[1],
             "yes" if info.invertible else f"no: {info.blocker}") for info, rf in zip(infos, rf_cols)]
    header = ("layer", "op", "output (C x H x W)", "RF size", "RF stride", "deconvnet")
    widths = [min(48, max(len(r[i]) for r in rows + [header])) for i in range(5)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths + [0])))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths + [0])))
    click.echo(f"input: {probe.input_name} {list(probe.input_shape)}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--image", "-i", type=click.Path(dir_okay=False),
              help="The input image [default: a bundled sample that suits the model].")
@click.option("--layer", "-l", help="Layer name (see `zfprobe layers`) [default: the deepest spatial layer the deconvnet passes].")
@click.option("--channel", "-c", "channels", type=int, multiple=True, help="Channel to project (repeatable).")
@click.option("--top", "-n", type=int, help="Also project the N channels with the strongest activation.")
@click.option("--unit", help="One unit CHANNEL,Y,X instead of each channel's strongest position.")
@click.option("--mode", type=click.Choice(["unit", "map"]), default="unit", show_default=True,
              help="unit: the strongest position of each channel; map: the whole feature map.")
@position_option
@click.option("--rule", type=click.Choice(RULE_CHOICES), default=AUTO, show_default=True,
              help="auto: guided backprop where no max-pool switch ties the deconvnet to the image, else deconvnet.")
@click.option("--lrn", type=click.Choice(LRN_MODES), default=LRN_IDENTITY, show_default=True,
              help="How LRN layers are reversed (the paper: identity).")
@preprocessing_options
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Display scale s = this percentile of each projection's non-zero |p| (stronger pixels saturate).")
@click.option("--max-scale", is_flag=True, help="Scale each projection by its max |p| instead (no saturation).")
@click.option("--dealias", "dealias_px", type=float, default=2.0, show_default=True,
              help="Display only: show projections low-passed at this many pixels (Gaussian sigma = PX/2; 0: off).")
@click.option("--frame", type=click.Choice(["rf", "full"]), default="rf", show_default=True,
              help="rf: crop each unit's projection and image to its receptive field (+25%); full: whole frame with the RF box.")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Output folder [default: ./zfprobe-visualize-<model>].")
@click.option("--verbose", "-v", is_flag=True, help="Say which projection program ran (windowed or full) and why.")
def visualize(model, image, layer, channels, top, unit, mode, positions, rule, lrn, preset, input_size, mean, std, scale, bgr,
              resize, percentile, max_scale, dealias_px, frame, device, out_dir, verbose):
    """Project units of LAYER for IMAGE to pixel space; write PNGs, a contact sheet and a manifest.

    Only MODEL is required: without --image a bundled sample image is used, without --layer the
    deepest spatial layer, without -o a folder named after the model."""
    from zfprobe.studies.defaults import output_folder

    probe, image = probe_and_image(model, image, input_size, device)
    layer = default_layer(probe, layer, "visualize")
    out_dir = out_dir or output_folder("visualize", model)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    position = None
    channels = list(channels)
    parsed = parse_unit(unit)
    if parsed:
        channels, position = [parsed[0]] + channels, parsed[1]
    if percentile is not None and not 0 < percentile <= 100:
        raise OptionError("--percentile must be in (0, 100]")
    if not 0 <= dealias_px <= 64:
        raise OptionError("--dealias must be between 0 and 64 pixels")
    from zfprobe.studies.visualize.compute import check_sheet_fits

    check_sheet_fits(len(channels) if channels else (top or 1), prep.size if prep is not None else (1, 1))  # before any projection
    result = probe.visualize(image, layer, channels=channels, top=top, mode=mode, position=position, rule=rule,
                             lrn=lrn, percentile=None if max_scale else percentile, preprocessing=prep, frame=frame,
                             positions=positions, dealias_px=dealias_px, stream=True)
    files = result.save(out_dir, probe)  # projects, draws and writes the seeds a bounded batch at a time
    say_rule(layer, result.rule_choice)
    if verbose:
        say_projection_paths(probe, maps=mode == "map")
    if result.predictions:
        from zfprobe.io.classes import describe_predictions

        click.echo(f"top-5: {describe_predictions(result.predictions)}")
    warning = result.zero_warning()
    if warning:
        click.echo(f"zfprobe: warning: {warning}", err=True)
    click.echo(f"{len(result.seeds)} projection(s) of {layer} ({result.rule}) in "
               f"{sum(result.timings.values()):.2f} s -> {out_dir} ({len(files)} files; see contact_sheet.png)")


@cli.command("export-deconv")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--layer", "-l", required=True)
@click.option("--rule", type=click.Choice(RULES), default=DECONVNET, show_default=True)
@click.option("--lrn", type=click.Choice(LRN_MODES), default=LRN_IDENTITY, show_default=True)
@click.option("--input-size", help="HxW, for models without a fixed input size.")
@click.option("--out", "-o", "out_path", required=True, type=click.Path(dir_okay=False))
def export_deconv(model, layer, rule, lrn, input_size, out_path):
    """Save the deconvnet of LAYER as an ONNX model (inputs: image, zf_seed, zf_seed_image)."""
    check_output_file(out_path)
    probe = open_probe(model, input_size, "cpu")
    probe.export_deconv(layer, out_path, rule, lrn)
    click.echo(f"deconvnet of {layer} ({rule}) -> {out_path}")


def _register_command_modules() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"zfprobe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"zfprobe.cli.{name}":
                continue
            raise
        cli.add_command(module.command)


_register_command_modules()


def main() -> None:
    cli(prog_name="zfprobe")


if __name__ == "__main__":
    main()
