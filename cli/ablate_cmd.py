"""``zfprobe ablate``: remove layers, channels or residual branches and measure the accuracy lost
(Zeiler & Fergus Table 3); optionally rank every channel of a layer by its importance."""
from __future__ import annotations

import os

import click

from zfprobe.cli.common import open_probe, preprocessing_from_options, preprocessing_options
from zfprobe.cli.validation import zfprobe_output
from zfprobe.errors import OptionError


def parse_channel_spec(spec: str, probe) -> tuple[str, tuple[int, ...]]:
    """'conv2:0-15,20' -> ('conv2', (0, ..., 15, 20))."""
    from zfprobe.studies.mining.compute import parse_channels

    if ":" not in spec:
        raise OptionError(f"cannot read --channels '{spec}'; write LAYER:CHANNELS, e.g. conv2:0-15")
    layer, chans = spec.rsplit(":", 1)
    shape = probe.graph.shape(probe.resolve(layer))
    if len(shape) < 2:
        raise OptionError(f"layer '{layer}' has no channels")
    if not chans.strip():
        raise OptionError(f"--channels '{spec}' names no channels; write e.g. {layer}:0-15")
    return layer, tuple(parse_channels(chans, shape[1]))


@click.command("ablate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path())
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
              help="Labels (model class indices, one per item) for a plain image folder or .npy array.")
@click.option("--layer", "-l", "layers", multiple=True, help="Remove a whole layer (repeatable).")
@click.option("--channels", "channel_specs", multiple=True, help="Ablate channels, LAYER:0-15,20 (repeatable).")
@click.option("--branch", "branches", multiple=True,
              help="Skip a residual branch: the layer that feeds the Add joining it to the skip path (repeatable).")
@click.option("--mode", type=click.Choice(["zero", "mean", "identity"]),
              help="zero, dataset mean, or identity (layers only; where shapes allow, else zero). "
                   "Default: identity for --layer, zero for --channels.")
@click.option("--importance", "importance_layer", help="Also rank every channel of this layer by the accuracy lost "
              "when it alone is ablated (--mode zero or mean).")
@click.option("--mine-dir", type=click.Path(file_okay=False),
              help="A `zfprobe mine` output folder: link the most important channels to their top-9 pictures.")
@click.option("--retrain-head", is_flag=True, help="Also retrain the softmax on the penultimate features of the "
              "intact and the ablated net (half the data each way, stratified) and compare.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --retrain-head's split and CV.")
@click.option("--array-key", help="Image array in a .npz (default: images, x, or the first).")
@click.option("--label-key", help="Label array in a .npz (default: labels, y, targets).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per forward pass.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model, data, labels_file, layers, channel_specs, branches, mode, importance_layer, mine_dir, retrain_head,
            seed, array_key, label_key, batch_size, quiet, preset, input_size, mean, std, scale, bgr, resize, device,
            out_dir):
    """Top-1 / top-5 accuracy and loss of MODEL on labelled DATA, intact and with parts removed.

    DATA: a folder per class (folders named by class index), a CSV of path,label, or a .npz with
    images and labels; labels are the model's class indices. The model file is never changed:
    the edits are made on a copy of its graph.
    """
    from zfprobe.io.provenance import __version__
    from zfprobe.studies.ablation.compute import (Edit, ablate, apply_edits, channel_importance, check_ablatable,
                                  check_labels, dataset_means, retrain_head as retrain)
    from zfprobe.studies.ablation.render import (comparison_plot, importance_csv, importance_pictures, importance_plot,
                                         markdown_table, metrics_csv, mine_links)
    from zfprobe.io.labelled import open_labelled
    from zfprobe.io.outputs import OutputStage
    from zfprobe.io.provenance import model_manifest

    import numpy as np

    if not (layers or channel_specs or branches or importance_layer):
        raise OptionError("say what to ablate: --layer, --channels LAYER:0-15, --branch NODE, or --importance LAYER")
    if channel_specs and mode == "identity":
        raise OptionError("channels are ablated with --mode zero or mean, not identity")
    if importance_layer and mode == "identity":
        raise OptionError("--importance ablates channels: use --mode zero or mean")
    if mine_dir is not None and not importance_layer:
        raise OptionError("--mine-dir only applies with --importance LAYER (its pictures show the important channels)")
    zfprobe_output(mine_dir, "mine", "--mine-dir")
    probe = open_probe(model, input_size, device)
    prep = preprocessing_from_options(probe, preset, mean, std, scale, bgr, resize)
    edits = [Edit("layer", l, (), mode or "identity") for l in layers]
    edits += [Edit("channels", *parse_channel_spec(s, probe), mode or "zero") for s in channel_specs]
    edits += [Edit("branch", b) for b in branches]
    for e in edits:
        check_ablatable(probe.graph, probe.resolve(e.layer), e.layer)
    if importance_layer:
        check_ablatable(probe.graph, probe.resolve(importance_layer), importance_layer)
    if retrain_head:
        from zfprobe.engine.heads import find_head

        find_head(probe.graph)
    labelled = open_labelled(data, prep, probe.input_shape, labels_file, array_key, label_key)
    if not probe.graph.outputs:
        raise OptionError("the model declares no graph output; ablation measures accuracy on its class output")
    n_out = int(np.prod(probe.graph.shape(probe.graph.outputs[0])[1:]))
    check_labels(labelled, n_out)
    if len(labelled.classes) < 2 and retrain_head:
        raise OptionError("the data has only one class; --retrain-head needs at least two")
    # a dry run of the edits surfaces every impossible edit (e.g. a branch without an Add) before any work
    apply_edits(probe.graph, edits, probe.resolve, {probe.resolve(e.layer): np.zeros(probe.graph.shape(probe.resolve(e.layer))[1:], np.float32)
                                                    for e in edits if e.kind != "branch"})
    progress = not quiet
    result = ablate(probe, labelled, edits, batch_size, progress) if edits else None
    if result is not None and retrain_head:
        needs = sorted({probe.resolve(e.layer) for e in edits if e.mode == "mean" and e.kind != "branch"})
        means = dataset_means(probe, labelled, needs, batch_size, progress) if needs else None
        edited, _ = apply_edits(probe.graph, edits, probe.resolve, means)
        result.retrained = retrain(probe, labelled, edited, seed, batch_size=batch_size, progress=progress)
    imp = channel_importance(probe, labelled, importance_layer, mode or "zero", min(batch_size, 32), progress) \
        if importance_layer else None
    model_name = os.path.basename(probe.source) if probe.source else probe.graph.name
    data_name = os.path.basename(os.path.normpath(data))
    with OutputStage(out_dir) as stage:
        summary = [f"# zfprobe ablate: {model_name} on {data_name}", ""]
        links = {}
        if result is not None:
            stage.write_bytes("metrics.csv", metrics_csv(result).encode())
            stage.write_bytes("table.md", markdown_table(result).encode())
            stage.write_bytes("ablation.png", comparison_plot(result, f"{model_name} on {data_name}: {'; '.join(result.applied)}"))
            i, a = result.intact, result.ablated
            summary += [f"Removing {'; '.join(result.applied)} changes top-1 accuracy on {i.n} labelled images from "
                        f"{100 * i.top1:.1f}% to {100 * a.top1:.1f}% ({100 * (a.top1 - i.top1):+.1f} points), top-{i.k} "
                        f"from {100 * i.top5:.1f}% to {100 * a.top5:.1f}%, and the loss from {i.loss:.3f} to {a.loss:.3f}.", ""]
            if result.retrained:
                rt = result.retrained
                summary += [f"With the softmax retrained on the penultimate features (as the paper retrains after "
                            f"removing layers), the intact net reaches {100 * rt['intact']:.1f}% and the ablated net "
                            f"{100 * rt['ablated']:.1f}% on {rt['test']} held-out images.", ""]
            summary += [markdown_table(result)]
        if imp is not None:
            order = imp.ranking()
            links = mine_links(mine_dir, importance_layer, order[:16], out_dir)
            stage.write_bytes("importance.csv", importance_csv(imp, links).encode())
            stage.write_bytes("importance.png", importance_plot(imp, f"{model_name} {importance_layer}: accuracy lost per channel ({imp.mode})"))
            if links:
                pics = importance_pictures(imp, {c: os.path.normpath(os.path.join(out_dir, p)) for c, p in links.items()})
                if pics:
                    stage.write_bytes("importance_top9.png", pics)
            harmless = int(np.sum(imp.drop_top1 <= 0))
            summary += [f"## Channel importance in {importance_layer}", "",
                        f"Each of the {len(order)} channels was ablated alone ({imp.mode}). The most important, "
                        f"channel {int(order[0])}, costs {100 * imp.drop_top1[order[0]]:.1f} points of top-1 accuracy "
                        f"(intact {100 * imp.intact.top1:.1f}%); {harmless} channel(s) cost nothing or help when removed.",
                        "", "![channels ranked](importance.png)", ""]
            if links:
                summary += ["![the most important channels and their top-9](importance_top9.png)", ""]
            summary += ["| rank | channel | top-1 lost (points) | loss increase | top-9 (`zfprobe mine`) |", "|---|---|---|---|---|"]
            for rank, c in enumerate(order[:16]):
                pic = f"![c{int(c)}]({links[int(c)]})" if int(c) in links else "-"
                summary.append(f"| {rank + 1} | {int(c)} | {100 * imp.drop_top1[c]:.2f} | {imp.drop_loss[c]:.4f} | {pic} |")
            summary.append("")
        stage.write_bytes("summary.md", ("\n".join(summary) + "\n").encode())
        manifest = {
            "zfprobe_version": __version__, "command": "ablate",
            "model": model_manifest(probe),
            "data": labelled.describe(), "preprocessing": prep.to_dict(),
            "edits": [{"kind": e.kind, "layer": e.layer, "tensor": probe.resolve(e.layer), "channels": list(e.channels),
                       "mode": e.mode} for e in edits],
            "applied": result.applied if result else [],
            "intact": (result.intact if result else imp.intact).to_dict(),
            "ablated": result.ablated.to_dict() if result else None,
            "retrained_head": result.retrained if result else None, "seed": seed,
            "importance": None if imp is None else {
                "layer": importance_layer, "mode": imp.mode, "only_rest_of_network_rerun": imp.shortcut,
                "ranking": [int(c) for c in imp.ranking()], "top1_drop": imp.drop_top1.tolist(),
                "loss_increase": imp.drop_loss.tolist(), "mine_pictures": links},
        }
        manifest["files"] = sorted(stage.files + ["manifest.json"])
        stage.write_json("manifest.json", manifest)
        stage.commit()
    if result is not None:
        click.echo(f"top-1 {100 * result.intact.top1:.1f}% -> {100 * result.ablated.top1:.1f}% "
                   f"({'; '.join(result.applied)}) -> {out_dir} (see summary.md)")
    if imp is not None:
        click.echo(f"{importance_layer}: most important channels {', '.join(str(int(c)) for c in imp.ranking()[:5])} -> {out_dir}")
