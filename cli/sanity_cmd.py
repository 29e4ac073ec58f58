"""``zfprobe sanity``: weight-randomization and unit-selectivity checks (PAPER.md section 10)."""
from __future__ import annotations

import click

from zfprobe.engine.rules import LRN_IDENTITY, LRN_MODES
from zfprobe.cli.common import open_probe, preprocessing_from_options, preprocessing_options
from zfprobe.errors import ImageError


@click.command("sanity")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--layer", "-l", required=True, help="Layer whose units are projected (the class scores for logits).")
@click.option("--rule", "rules", default="deconvnet,gradient,guided", show_default=True,
              help="Rules to check, comma-separated.")
@click.option("--units", default="top:8", show_default=True,
              help="top:N (the N strongest channels per image, at their strongest position) or logit (top-1 class).")
@click.option("--mode", "modes", default="cascade,independent", show_default=True,
              help="cascade (top layer down, cumulative) and/or independent (one layer at a time).")
@click.option("--init", type=click.Choice(["matched", "he", "glorot"]), default="matched", show_default=True,
              help="Random weights: matched (normal with the trained mean/std), he or glorot.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--steps", "max_steps", type=click.IntRange(min=1), default=None,
              help="Group the weight layers into at most this many steps [default: one step per layer].")
@click.option("--lrn", type=click.Choice(LRN_MODES), default=LRN_IDENTITY, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model, images, layer, rules, units, modes, init, seed, max_steps, lrn, progress, preset, input_size,
            mean, std, scale, bgr, resize, device, out_dir):
    """Randomize MODEL's weights (cascading from LAYER down, and one layer at a time) and measure
    how much the projections of LAYER's units for IMAGES change; also how alike different units'
    projections are. Writes curves, strips, CSV tables, summary.md and a manifest."""
    from zfprobe.studies.sanity.compute import MODES, RULES, parse_choices, parse_units, run_sanity
    from zfprobe.studies.sanity.render import save

    rules_list = parse_choices(rules, RULES, "rule")  # validate options before any work
    modes_list = parse_choices(modes, MODES, "mode")
    parse_units(units)
    from zfprobe.io.image_files import expand_images, image_size

    paths = expand_images(images)
    if not paths:
        raise ImageError("no images given; pass image files or folders after the model")
    for path in paths:  # a missing or unreadable file fails now, not after the trained projections
        image_size(path)
    probe = open_probe(model, input_size, device)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    result = run_sanity(probe, paths, layer, rules=rules_list, units=units, modes=modes_list, init=init, seed=seed,
                        max_steps=max_steps, lrn=lrn, preprocessing=prep, progress=progress)
    files = save(result, out_dir, probe)
    for text in result.verdicts().values():
        click.echo(text)
    click.echo(f"{len(result.seeds)} units, {len(result.layers)} weight layers, "
               f"{sum(len(s) - 1 for s in result.steps.values())} randomized models x {len(result.rules)} rules in "
               f"{sum(result.timings.values()):.1f} s -> {out_dir} ({len(files)} files; see summary.md)")
