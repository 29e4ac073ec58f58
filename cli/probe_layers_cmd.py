"""``zfprobe probe-layers``: the same softmax on every chosen layer's fixed features, as a table
and a plot of accuracy against depth (Zeiler & Fergus Table 7)."""
from __future__ import annotations

import click

from zfprobe.cli.common import preprocessing_options
from zfprobe.cli.transfer_cmd import one_line, run_study, study_options


@click.command("probe-layers")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path())
@study_options
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model, data, layers, test_data, per_class, splits, pool, seed, labels_file, test_labels_file, array_key,
            label_key, batch_size, cache_dir, no_cache, quiet, preset, input_size, mean, std, scale, bgr, resize,
            device, out_dir):
    """A linear probe (new softmax) on each LAYER of MODEL, trained on N images per class of DATA.

    Give the layers in depth order (-l conv1 -l conv2 ...): the table and accuracy_vs_depth.png
    follow that order. One extraction pass serves every layer.
    """
    prep_options = dict(preset=preset, mean=mean, std=std, scale=scale, bgr=bgr, resize=resize,
                        input_size=input_size, device=device)
    result, _ = run_study("probe-layers", model, data, layers, test_data, per_class, splits, pool, seed, labels_file,
                          test_labels_file, array_key, label_key, batch_size, cache_dir, no_cache, quiet, prep_options,
                          out_dir)
    click.echo(one_line(result, out_dir))
