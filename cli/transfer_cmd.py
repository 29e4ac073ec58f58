"""``zfprobe transfer``: fixed features + a new softmax vs the same net trained from scratch
(Zeiler & Fergus Tables 4-6). :func:`run_study` is shared with ``zfprobe probe-layers``."""
from __future__ import annotations

import os

import click
import numpy as np

from zfprobe.cli.common import open_probe, preprocessing_from_options, preprocessing_options
from zfprobe.errors import OptionError

SCRATCH_MEMORY = 1024**3  # bytes of images the from-scratch comparison may hold in memory


def study_options(fn):
    """Options shared by transfer and probe-layers."""
    options = [
        click.option("--layer", "-l", "layers", required=True, multiple=True,
                     help="Layer whose fixed features feed the softmax (repeatable; one extraction pass for all)."),
        click.option("--test", "test_data", type=click.Path(exists=False),
                     help="A separate labelled test set (default: test on the images not drawn for training)."),
        click.option("--per-class", default="15,30", show_default=True,
                     help="Training images per class, comma-separated (one table column each)."),
        click.option("--splits", type=int, default=5, show_default=True, help="Random training splits per size."),
        click.option("--pool", type=click.Choice(["avg", "max", "flatten"]), default="avg", show_default=True,
                     help="How a layer's feature map becomes a feature vector."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splits, CV folds and training."),
        click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
                     help="Labels (one per item, .npy or text) for a plain image folder or .npy array."),
        click.option("--test-labels", "test_labels_file", type=click.Path(dir_okay=False), help="Labels for --test."),
        click.option("--array-key", help="Image array in a .npz (default: images, x, or the first)."),
        click.option("--label-key", help="Label array in a .npz (default: labels, y, targets)."),
        click.option("--batch-size", type=int, help="Images per forward pass."),
        click.option("--cache-dir", type=click.Path(file_okay=False),
                     help="Where extracted features are cached (default: $ZFPROBE_CACHE or ~/.cache/zfprobe/features)."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the feature cache."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _test_labels_in_train_space(train, test) -> np.ndarray:
    if train.numeric and test.numeric:
        return test.labels
    by_name = {name: label for label, name in train.names.items()}
    names = [test.names[int(l)] for l in test.labels]
    unknown = sorted({n for n in names if n not in by_name})
    if unknown:
        raise OptionError(f"the test set has class(es) the training set lacks: {', '.join(unknown[:5])}")
    return np.asarray([by_name[n] for n in names], np.int64)


def run_study(command: str, model, data, layers, test_data, per_class, splits, pool, seed, labels_file,
              test_labels_file, array_key, label_key, batch_size, cache_dir, no_cache, quiet, prep_options,
              out_dir, scratch: bool = False, epochs: int = 60):
    from zfprobe.studies.transfer.features import default_cache_dir, extract
    from zfprobe.io.labelled import open_labelled
    from zfprobe.io.outputs import OutputStage
    from zfprobe.studies.transfer.compute import check_classes, evaluate_transfer, parse_per_class
    from zfprobe.studies.transfer.render import bar_plot, depth_plot, markdown_table, scores_csv, summary_markdown, table_csv
    from zfprobe.io.provenance import model_manifest

    per_class = parse_per_class(per_class)
    if splits < 1:
        raise OptionError("--splits must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise OptionError("--batch-size must be at least 1")
    if epochs < 1:
        raise OptionError("--epochs must be at least 1")
    probe = open_probe(model, prep_options.pop("input_size"), prep_options.pop("device"))
    prep = preprocessing_from_options(probe, **prep_options)
    layers = list(dict.fromkeys(layers))
    tensors = {l: probe.resolve(l) for l in layers}
    train = open_labelled(data, prep, probe.input_shape, labels_file, array_key, label_key)
    test = open_labelled(test_data, prep, probe.input_shape, test_labels_file, array_key, label_key) if test_data else None
    test_y = _test_labels_in_train_space(train, test) if test else None
    check_classes(train.labels, train.names, per_class, test is not None)
    if scratch:
        from zfprobe.engine.heads import find_head

        find_head(probe.graph)
        n_img = len(train) + (len(test) if test else 0)
        need = 4 * n_img * int(np.prod(probe.input_shape[1:]))
        if need > SCRATCH_MEMORY:
            raise OptionError(f"the from-scratch comparison holds the images in memory ({need / 1024**3:.1f} GB here); "
                              "use a smaller dataset or --no-scratch")
    cache = None if no_cache else (cache_dir or default_cache_dir())
    progress = not quiet
    feats = extract(probe, train.dataset, layers, pool, batch_size, progress, cache)
    y = train.labels[feats.indices]
    test_pair = None
    if test is not None:
        tf = extract(probe, test.dataset, layers, pool, batch_size, progress, cache)
        test_pair = (tf.matrices, test_y[tf.indices])
    scratch_fn = None
    if scratch:
        from zfprobe.adapters.training.graph_trainer import train_from_scratch
        from zfprobe.io.labelled import subset_dataset

        images = subset_dataset(train, probe.input_shape, feats.indices)
        test_images = subset_dataset(test, probe.input_shape, tf.indices) if test is not None else None

        def scratch_fn(tr, rest):
            predict = train_from_scratch(probe.graph, images[tr], y[tr], epochs=epochs, seed=seed)
            if test_images is not None:
                return float(np.mean(predict(test_images) == test_pair[1]))
            return float(np.mean(predict(images[rest]) == y[rest]))

    result = evaluate_transfer(feats.matrices, y, per_class, splits, seed, test_pair, scratch_fn, train.names,
                               progress, positions=feats.indices)
    model_name = os.path.basename(probe.source) if probe.source else probe.graph.name
    data_name = os.path.basename(os.path.normpath(data))
    with OutputStage(out_dir) as stage:
        stage.write_bytes("scores.csv", scores_csv(result).encode())
        stage.write_bytes("table.csv", table_csv(result).encode())
        stage.write_bytes("table.md", markdown_table(result).encode())
        if command == "probe-layers":
            plot = stage.write_bytes("accuracy_vs_depth.png", depth_plot(result, f"linear probe per layer: {model_name} on {data_name}"))
        else:
            plot = stage.write_bytes("transfer.png", bar_plot(result, f"{model_name} features + new softmax vs from scratch, on {data_name}"))
        stage.write_bytes("summary.md", summary_markdown(result, command, model_name, data_name, pool).encode())
        from zfprobe.io.provenance import __version__

        manifest = {
            "zfprobe_version": __version__, "command": command,
            "model": model_manifest(probe),
            "data": train.describe(), "test_data": test.describe() if test else None,
            "preprocessing": prep.to_dict(),
            "layers": {l: {"tensor": t, "features": int(feats.matrices[l].shape[1])} for l, t in tensors.items()},
            "pool": pool, "per_class": per_class, "splits": splits, "seed": seed,
            "classifier": "StandardScaler + LogisticRegression (multinomial, L-BFGS; SGDClassifier log-loss for very wide "
                          "features); C from {1e-3 .. 1e2} by stratified 3-fold CV on the training split",
            "scratch": {"epochs": epochs, "optimizer": "Adam lr 3e-3 wd 1e-4", "batch_size": 32} if scratch else None,
            "features_pass": {"seconds": round(feats.seconds, 3), "cached": feats.cached, "skipped": feats.skipped,
                              "images_per_second": None if feats.cached else round(feats.images_per_second, 1)},
            "table": result.table(), "training_items": result.splits, "plot": plot,
        }
        manifest["files"] = sorted(stage.files + ["manifest.json"])
        stage.write_json("manifest.json", manifest)
        stage.commit()
    return result, feats


@click.command("transfer")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("data", type=click.Path())
@study_options
@click.option("--scratch/--no-scratch", default=True, show_default=True,
              help="Also train the same architecture from scratch on the same images (torch).")
@click.option("--epochs", type=int, default=60, show_default=True, help="Epochs of the from-scratch training.")
@preprocessing_options
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
def command(model, data, layers, test_data, per_class, splits, pool, seed, labels_file, test_labels_file, array_key,
            label_key, batch_size, cache_dir, no_cache, quiet, scratch, epochs, preset, input_size, mean, std, scale,
            bgr, resize, device, out_dir):
    """Fixed features of LAYER(s) of MODEL + a new softmax, trained on N images per class of DATA.

    DATA: a folder per class, a CSV of path,label, or a .npz with images and labels. Reports
    mean and standard deviation of test accuracy over --splits random splits, and (unless
    --no-scratch) the same architecture trained from scratch on the same images.
    """
    prep_options = dict(preset=preset, mean=mean, std=std, scale=scale, bgr=bgr, resize=resize,
                        input_size=input_size, device=device)
    result, _ = run_study("transfer", model, data, layers, test_data, per_class, splits, pool, seed, labels_file,
                          test_labels_file, array_key, label_key, batch_size, cache_dir, no_cache, quiet, prep_options,
                          out_dir, scratch=scratch, epochs=epochs)
    click.echo(one_line(result, out_dir))


def one_line(result, out_dir) -> str:
    """The command's closing line (shared with probe-layers)."""
    n = max(result.per_class)
    parts = [f"{r['layer']} {100 * r[f'mean_{n}']:.1f}%" for r in result.table()]
    return f"{n}/class, {result.n_splits} split(s): " + ", ".join(parts) + f" -> {out_dir} (see summary.md)"
