"""``zfprobe mine``: the top-k images of every feature map over a dataset (the paper's Fig. 2)."""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import click

from zfprobe.engine.rules import AUTO, LRN_IDENTITY, LRN_MODES, RULE_CHOICES
from zfprobe.cli.common import open_probe, position_option, say_rule, preprocessing_from_options, preprocessing_options
from zfprobe.errors import OptionError
from zfprobe.io.pictures import DEFAULT_PERCENTILE

MAX_TOP = 1000          # images kept per channel (the paper shows 9)
MAX_PER_PAGE = 1024     # channels per contact sheet page
MIN_TILE, MAX_TILE = 4, 1024  # tile side on the sheets, in pixels


def checkpoint_interval() -> float:
    """Seconds between mining checkpoints: 30, or ``ZFPROBE_MINE_CHECKPOINT_S`` (0: after every batch)."""
    want = os.environ.get("ZFPROBE_MINE_CHECKPOINT_S")
    if not want:
        return 30.0
    from zfprobe.cli.validation import number

    return number(want, "ZFPROBE_MINE_CHECKPOINT_S", low=0.0)


@click.command("mine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path(), required=False)
@click.option("--layer", "-l", "layers", multiple=True,
              help="Layer to mine (repeatable; one pass for all) [default: 3 layers spread over depth].")
@click.option("--top", "-k", "k", type=int, default=9, show_default=True, help="Images kept per channel.")
@click.option("--channels", "-c", help="Channels to project and show, e.g. 0-15,40 (default: all; mining covers all).")
@click.option("--per-page", type=int, default=64, show_default=True, help="Channels per contact sheet page.")
@click.option("--rule", type=click.Choice(RULE_CHOICES), default=AUTO, show_default=True,
              help="auto: per layer, guided backprop where no max-pool switch ties the deconvnet to the image, else deconvnet.")
@click.option("--lrn", type=click.Choice(LRN_MODES), default=LRN_IDENTITY, show_default=True)
@click.option("--batch-size", type=int, help="Images per forward pass (default: sized from --memory).")
@click.option("--limit", type=int, help="Use only the first N images of the dataset.")
@click.option("--array-key", help="Array to use in a .npz file (default: images, x, or the first).")
@click.option("--tile", type=int, help="Tile size in pixels on the sheets (default: from the receptive field).")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True,
              help="Display scale s = this percentile of each projection's non-zero |p| (stronger pixels saturate).")
@click.option("--max-scale", is_flag=True, help="Scale each projection by its max |p| instead (no saturation).")
@click.option("--dealias", "dealias_px", type=float, default=2.0, show_default=True,
              help="Display only: show projections low-passed at this many pixels (Gaussian sigma = PX/2; 0: off).")
@click.option("--masked", is_flag=True, help="Display only: add a third grid per channel, the patches weighted by "
                                            "the normalized |projection|.")
@position_option
@click.option("--no-project", is_flag=True, help="Only mine: write index.csv and manifest.json, no pictures.")
@click.option("--no-channel-pngs", is_flag=True, help="Do not write one PNG per channel.")
@click.option("--restart", is_flag=True, help="Ignore a saved state in OUT and mine from the first image.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where to mine and project: this process, or a Ray cluster (needs zfprobe[ray]).")
@click.option("--address", help="Ray cluster to use: auto, HOST:PORT or ray://HOST:10001 "
              "[default: a local cluster started for this run]. Only with --engine ray.")
@click.option("--workers", type=int, help="Forward-pass actors on the cluster, one CPU each [default: 1]. "
              "Only with --engine ray.")
@click.option("--gpus-per-worker", type=float, help="GPU share of each actor, e.g. 0.25 [default: 0]. "
              "Only with --engine ray.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False),
              help="Output folder [default: ./zfprobe-mine-<model>].")
def command(model, data, layers, k, channels, per_page, rule, lrn, batch_size, limit, array_key, tile, percentile,
            max_scale, dealias_px, masked, positions, no_project, no_channel_pngs, restart, quiet, engine, address, workers, gpus_per_worker, preset, input_size, mean, std, scale, bgr, resize, device, out_dir):
    """Top-K images per feature map of each LAYER over DATA (a folder of images, a .txt list of image
    paths, a .npy/.npz array, or a folder of .npy shards).

    Writes per layer contact sheets (projections | image patches, as in Zeiler & Fergus Fig. 2),
    one PNG per channel, index.csv and manifest.json into OUT, all at once at the end. While
    mining, OUT/.mine-state.npz is checkpointed: rerunning the same command resumes (a finished
    mining pass is reused), other inputs start clean, --restart always starts clean.
    """
    from zfprobe.io.datasets import open_dataset
    from zfprobe.studies.mining.compute import STATE_FILE, layer_shapes, parse_channels
    from zfprobe.io.outputs import check_output_path, output_lock

    # every option is checked here, before the mining pass, never after it
    check_output_path(out_dir)
    if data is not None and os.path.exists(data) and os.path.realpath(data) == os.path.realpath(out_dir):
        raise OptionError("the output folder is the dataset folder; give -o another folder (a subfolder is fine)")
    if not 1 <= k <= MAX_TOP:
        raise OptionError(f"--top must be between 1 and {MAX_TOP}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise OptionError(f"--per-page must be between 1 and {MAX_PER_PAGE}")
    if tile is not None and not MIN_TILE <= tile <= MAX_TILE:
        raise OptionError(f"--tile must be between {MIN_TILE} and {MAX_TILE} pixels")
    if limit is not None and limit < 1:
        raise OptionError("--limit must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise OptionError("--batch-size must be at least 1")
    if not 0 < percentile <= 100:
        raise OptionError("--percentile must be in (0, 100]")
    if not 0 <= dealias_px <= 64:
        raise OptionError("--dealias must be between 0 and 64 pixels")
    ray_options = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker}
    if engine == "local":
        given = [f"--{name.replace('_', '-')}" for name, v in ray_options.items() if v is not None]
        if given:
            raise OptionError(f"{', '.join(given)} only apply to --engine ray")
    else:
        if dealias_px != 2.0:
            raise OptionError("--dealias applies to --engine local (the Ray workers draw with the default 2 px)")
        if workers is not None and workers < 1:
            raise OptionError("--workers must be at least 1")
        if gpus_per_worker is not None and not 0 <= gpus_per_worker <= 64:
            raise OptionError("--gpus-per-worker must be between 0 and 64")
        from zfprobe.adapters.engines.ray_engine import import_ray

        import_ray()  # without Ray: one line that says how to install it, before any work
    from zfprobe.studies.defaults import PHOTOS, output_folder, sample_dataset, spread_layers

    probe = open_probe(model, input_size, device, image=os.path.join(PHOTOS, "chelsea.jpg") if data is None else None)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    if data is None:
        data = sample_dataset(prep)
        click.echo(f"zfprobe: no DATA given; mining the bundled samples in {data}", err=True)
    if not layers:
        layers = tuple(spread_layers(probe))
        if not layers:
            raise OptionError("the model has no spatial layer the deconvnet can pass; give --layer (see `zfprobe layers`)")
        click.echo(f"zfprobe: no --layer given; using {', '.join(layers)} (spread over depth)", err=True)
    out_dir = out_dir or output_folder("mine", model)
    if max_scale:
        percentile = None
    shapes = layer_shapes(probe, layers)
    for layer in layers:
        parse_channels(channels, shapes[layer][1][0])
    dataset = open_dataset(data, prep, probe.input_shape, array_key, exclude=(out_dir,))
    if not no_project:
        from zfprobe.studies.mining.stream import check_layer_pictures

        # a sheet has a slot per kept image: no more than the dataset holds (--top 1000 over 20 images: 20)
        slots = min(k, len(dataset), limit or k)
        for layer in layers:  # a layer the deconvnet cannot pass fails now, not after mining
            probe.deconv_program(layer, rule, lrn)
            check_layer_pictures(probe, layer, slots, per_page, tile, len(parse_channels(channels, shapes[layer][1][0])),
                                 prep.layout)
    with output_lock(out_dir), checkpoint_kept_on_failure(os.path.join(out_dir, STATE_FILE)) as state:
        if restart and os.path.lexists(state):
            os.unlink(state)
        args = (probe, prep, dataset, out_dir, state, layers, k, channels, per_page, rule, lrn,
                batch_size, limit, tile, percentile, no_project, no_channel_pngs, restart, quiet,
                {"dealias_px": dealias_px, "masked": masked, "position": positions})
        if engine == "ray":
            from zfprobe.adapters.engines.ray_engine import connected

            with connected(address):
                files, result = _mine_and_save(*args, ray={"workers": workers or 1, "device": device,
                                                           "gpus_per_worker": gpus_per_worker or 0.0})
        else:
            files, result = _mine_and_save(*args)
    s = result.summary()
    speed = "saved mining pass reused" if result.resumed_from >= result.images_seen else f"{s['images_per_second'] or 0:.0f} img/s"
    click.echo(f"mined {s['images_used']} image(s) ({s['skipped']} skipped) for {len(layers)} layer(s), top {k}, "
               f"{speed} -> {out_dir} ({len(files)} files; see index.csv"
               + ("" if no_project else " and */sheet_001.png") + ")")


@contextmanager
def checkpoint_kept_on_failure(state: str):
    """The checkpoint path for the block. A block that fails (a full disk, a bad file; not an
    interruption) leaves the checkpoint as it was before: the earlier one back byte for byte (a
    hard link kept beside it; a rename needs no free space), or none when there was none. A link
    named like the checkpoint is refused: zfprobe never writes through links in its output folder."""
    from zfprobe.io.confined import LinkInOutputError

    if os.path.islink(state):
        raise LinkInOutputError(f"'{state}' is a symbolic link; zfprobe never follows or replaces links in its "
                                "output folder: remove it or choose another folder with -o")
    kept = os.path.join(os.path.dirname(state), f".zfprobe-tmp-checkpoint-{os.getpid()}")
    had = os.path.isfile(state)
    if had:
        try:
            os.link(state, kept)
        except OSError:  # no hard links here: keep the bytes instead
            with open(state, "rb") as f:
                kept_bytes = f.read()
            kept = None
    ok = False
    try:
        yield state
        ok = True
    except KeyboardInterrupt:
        ok = True  # interrupted: the new checkpoint is the point of it
        raise
    finally:
        if not ok:
            if had and kept is not None:
                if os.path.lexists(state) and os.path.samefile(kept, state):
                    os.unlink(kept)  # never rewritten (rename() between two links of one file does nothing)
                else:
                    os.replace(kept, state)
            elif had:
                from zfprobe.io.outputs import write_file_atomically

                write_file_atomically(state, kept_bytes)
            elif os.path.lexists(state):
                os.unlink(state)
        elif had and kept is not None and os.path.lexists(kept):
            os.unlink(kept)


def _mine_and_save(probe, prep, dataset, out_dir, state, layers, k, channels, per_page, rule, lrn, batch_size, limit,
                   tile, percentile, no_project, no_channel_pngs, restart, quiet, display, ray=None):
    """Mine, project and publish; ``display``: dealias_px, masked and the position rule; ``ray``: the
    Ray engine's settings (None: the local engine)."""
    from zfprobe.studies.mining.compute import mine, parse_channels
    from zfprobe.studies.mining.render import save_mining
    from zfprobe.studies.mining.stream import streamed_layer

    skipped_msgs = []
    engine_mine = mine
    if ray is not None:
        from functools import partial

        from zfprobe.adapters.engines.ray_engine import mine_ray

        engine_mine = partial(mine_ray, **ray)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = engine_mine(probe, dataset, list(layers), k=k, batch_size=batch_size, progress=not quiet,
                             state_path=state, resume=not restart, limit=limit, log=lambda m: click.echo(f"zfprobe: note: {m}", err=True),
                             checkpoint_every=checkpoint_interval(), position=display["position"])
        skipped_msgs = [str(w.message) for w in caught if str(w.message).startswith("skipped ")]
    for msg in skipped_msgs[:20]:
        click.echo(f"zfprobe: warning: {msg}", err=True)
    if len(skipped_msgs) > 20:
        click.echo(f"zfprobe: warning: ... and {len(skipped_msgs) - 20} more unreadable file(s)", err=True)
    n_used = result.images_seen - len(result.skipped)
    if n_used < k:
        click.echo(f"zfprobe: warning: only {n_used} image(s) were read; each channel shows at most {n_used} instead of {k}", err=True)
    pictures = {}
    if not no_project:
        chans = {layer: parse_channels(channels, result.layers[layer].channels) for layer in layers}
        for layer in layers:  # projected page by page while the outputs are written (bounded memory)
            source = None
            if ray is not None:  # the projection stage on the cluster, a group of units per pipeline
                from zfprobe.adapters.engines.ray_engine import tile_source

                source = tile_source(probe, result.dataset, layer, probe.choose_rule(layer, rule).rule, lrn, percentile,
                                     **ray)
            pictures[layer] = streamed_layer(probe, result, layer, rule, lrn, chans[layer], percentile, source=source,
                                             dealias_px=display["dealias_px"], masked=display["masked"])
    else:
        from zfprobe.studies.mining.render import LayerPictures
        from zfprobe.engine.receptive_field import receptive_field

        for layer in layers:
            top = result.layers[layer]
            rf = receptive_field(probe.graph, top.tensor, prep.layout)
            pictures[layer] = LayerPictures(layer, top.tensor, probe.choose_rule(layer, rule).rule, parse_channels(channels, top.channels), rf.size, rf.stride)
    files = save_mining(out_dir, probe, result, pictures, rule, lrn, per_page, tile,
                        channel_pngs=not no_channel_pngs and not no_project, sheets=not no_project,
                        extra={"no_project": bool(no_project)})
    for layer in layers:  # after the run: which rule and why, and any exactly-zero projections
        say_rule(layer, probe.choose_rule(layer, rule).to_dict())
        warning = None if no_project else pictures[layer].zero_warning()
        if warning:
            click.echo(f"zfprobe: warning: {warning}", err=True)
    return files, result
