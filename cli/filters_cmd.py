"""``zfprobe filters``: first-layer filter diagnostics (the paper's Fig. 6 and Sec. 4.1)."""
from __future__ import annotations

import os

import click

from zfprobe.cli.common import open_probe, preprocessing_from_options, preprocessing_options
from zfprobe.cli.validation import FRACTION, Number, check_preprocessing_options
from zfprobe.errors import OptionError

MODEL_EXTENSIONS = (".onnx", ".keras", ".h5", ".hdf5")


def split_arguments(paths: tuple[str, ...]) -> tuple[list[str], str | None]:
    """MODEL [MODEL] [DATA]: model files by extension, at most one dataset (folder / .npy / .npz)."""
    models = [p for p in paths if os.path.splitext(p)[1].lower() in MODEL_EXTENSIONS]
    data = [p for p in paths if p not in models]
    if not models:
        raise OptionError("give a model file (.onnx, .keras, .h5) first: zfprobe filters MODEL [MODEL_B] [DATA] -o OUT")
    if len(models) > 2:
        raise OptionError("zfprobe filters compares at most two models")
    if len(data) > 1:
        raise OptionError(f"more than one dataset given ({', '.join(data)}); give one folder or .npy / .npz file")
    return models, (data[0] if data else None)


@click.command("filters")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", help="Conv layer to diagnose (default: the first convolution).")
@click.option("--dead-norm", type=Number(0.0), default=0.05, show_default=True,
              help="Dead if the filter's L2 norm is at most this fraction of the bank's median norm.")
@click.option("--inactive-rate", type=FRACTION, default=0.0, show_default=True,
              help="With DATA: dead if active (output > 0) on at most this fraction of positions.")
@click.option("--saturated-rate", type=FRACTION, default=1.0, show_default=True,
              help="With DATA: dead if at its ceiling (no ceiling: active) on at least this fraction of positions.")
@click.option("--aliasing-layer", help="With DATA: also measure the stride grid in projections of this deeper layer.")
@click.option("--period", type=int, help="Grid period in pixels for the aliasing check (default: the stride of that layer's receptive field).")
@click.option("--fft-size", type=int, help="DFT size of the filter spectra (default: 4 bins per kernel pixel, at least 32).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option("--limit", type=int, help="Use only the first N images of DATA.")
@click.option("--array-key", help="Array to use in a .npz file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(paths, layer, dead_norm, inactive_rate, saturated_rate, aliasing_layer, period, fft_size, batch_size,
            limit, array_key, quiet, preset, input_size, mean, std, scale, bgr, resize, device, out_dir):
    """Diagnose a conv layer's filters: MODEL [MODEL_B] [DATA].

    Writes the filter grid, amplitude spectra, the bank's (frequency, orientation) coverage,
    filters.csv (RMS, dominant frequency and orientation, energy above the stride's Nyquist,
    dead flags), summary.md and manifest.json into OUT. With DATA (a folder of images or a
    .npy / .npz array) filters never active or always saturated over it also count as dead.
    Two models are diagnosed side by side (the paper's AlexNet vs ZFNet, Fig. 6).
    """
    from zfprobe.io.datasets import open_dataset
    from zfprobe.studies.filters.compute import DeadThresholds, diagnose
    from zfprobe.studies.filters.render import save_diagnosis

    models, data = split_arguments(paths)
    check_preprocessing_options(preset, mean, std, scale, data)
    if dead_norm < 0 or not 0 <= inactive_rate <= 1 or not 0 <= saturated_rate <= 1:
        raise OptionError("--dead-norm must be >= 0; --inactive-rate and --saturated-rate must be in [0, 1]")
    for name, value in (("--batch-size", batch_size), ("--limit", limit), ("--period", period), ("--fft-size", fft_size)):
        if value is not None and value < 1:
            raise OptionError(f"{name} must be at least 1")
    if aliasing_layer and data is None:
        raise OptionError("--aliasing-layer needs DATA: the check projects the strongest units over a dataset")
    thresholds = DeadThresholds(dead_norm, inactive_rate, saturated_rate)
    items, checks = [], []
    labels = [os.path.basename(m) for m in models]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = models
    for path, label in zip(models, labels):
        probe = open_probe(path, input_size, device)
        dataset = None
        if data is not None:
            prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
            dataset = open_dataset(data, prep, probe.input_shape, array_key)
        d = diagnose(probe, layer, dataset, thresholds, batch_size, limit, progress=not quiet, fft=fft_size)
        items.append((label, probe, d))
        if aliasing_layer:
            from zfprobe.studies.filters.aliasing import aliasing_check

            checks.append((label, aliasing_check(probe, dataset, aliasing_layer, period, batch_size=batch_size,
                                                 limit=limit, progress=not quiet)))
    files = save_diagnosis(out_dir, items, checks, extra={"data": data, "limit": limit})
    for label, _, d in items:
        click.echo(f"{label} {d.bank.layer}: {int(d.dead.sum())} of {d.bank.count} filters dead; "
                   f"{100 * d.measures.bank_alias_fraction:.0f}% of energy above the stride-{max(d.bank.stride)} Nyquist")
    click.echo(f"-> {out_dir} ({len(files)} files; see summary.md)")
