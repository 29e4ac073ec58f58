"""``zfprobe evolution``: render the paper's Fig. 4 from a store recorded during training."""
from __future__ import annotations

import os

import click

from zfprobe.errors import OptionError


@click.command("evolution")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Output folder (default: STORE/figures).")
@click.option("--tile", type=int, default=72, show_default=True, help="Tile size in pixels.")
def command(store, out_dir, tile):
    """Render Fig. 4 (feature evolution) from a STORE recorded during training.

    STORE is written by zfprobe.torch.EvolutionRecorder or zfprobe.keras.EvolutionCallback.
    Writes one figure per layer (feature maps as rows, epochs as columns), the strongest
    activation against the epoch, strongest.csv, summary.md and manifest.json.
    """
    from zfprobe.studies.evolution.render import render

    if tile < 8:
        raise OptionError("--tile must be at least 8")
    out_dir = out_dir or os.path.join(store, "figures")
    files = render(store, out_dir, tile)
    click.echo(f"rendered {store} -> {out_dir} ({len(files)} files; see summary.md)")
