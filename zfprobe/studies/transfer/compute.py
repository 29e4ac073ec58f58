"""Transfer with a retrained softmax (paper Tables 4-6) and per-layer linear probes (Table 7).

Protocol, as in the paper's Caltech experiments: for each N in ``per_class`` and each of
``n_splits`` random splits, N images per class are drawn for training (seeded, per class) and the
classifier is tested on the rest of the data (or on a separate test set when one is given). The
classifier is scikit-learn's multinomial ``LogisticRegression`` on features standardized with the
training split's statistics only (a ``StandardScaler`` inside the pipeline); its inverse
regularization strength C is chosen by stratified cross-validation on the training split only
(``GridSearchCV``), never looking at test images. For very wide features (``--pool flatten`` on
an early layer) an ``SGDClassifier`` with log loss takes its place.

Determinism: the classifier stage gives the same answer whatever the machine's load and thread
count. Every fit runs with one BLAS / OpenMP thread (``threadpoolctl``), so no parallel reduction
changes the order of a sum, and ties in the cross-validation score are broken by a fixed rule
(:func:`pick_c`): the highest mean CV accuracy wins, scores within ``CV_TIE`` of each other are
tied, and a tie goes to the smallest C (the strongest regularization).

The "from scratch" comparison is a callable handed in by the caller (the torch trainer in
:mod:`zfprobe.adapters.training.graph_trainer`), so this module stays framework-free.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from zfprobe.errors import OptionError

DEFAULT_CS = tuple(float(c) for c in np.logspace(-3, 2, 6))
SGD_THRESHOLD = 20_000_000  # n_train * D above which SGD replaces L-BFGS
CV_TIE = 1e-9  # mean CV accuracies closer than this are a tie (then the smallest C wins)


@dataclass
class Score:
    """One classifier trained on one split: ``method`` is ``softmax`` (fixed features of
    ``layer``) or ``scratch`` (the whole architecture trained on the same images)."""

    method: str
    layer: str
    per_class: int
    split: int
    accuracy: float
    n_train: int
    n_test: int
    C: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TransferResult:
    scores: list[Score]
    layers: list[str]
    per_class: list[int]
    n_splits: int
    seed: int
    splits: dict[str, list[int]] = field(default_factory=dict)  # "N/split" -> training item indices
    separate_test: bool = False

    def table(self) -> list[dict]:
        """Mean and standard deviation of test accuracy per (method, layer, N), in order."""
        rows = []
        keys = [("softmax", l) for l in self.layers] + ([("scratch", "scratch")] if any(s.method == "scratch" for s in self.scores) else [])
        for method, layer in keys:
            row = {"method": method, "layer": layer}
            for n in self.per_class:
                acc = [s.accuracy for s in self.scores if s.method == method and s.layer == layer and s.per_class == n]
                row[f"mean_{n}"] = float(np.mean(acc)) if acc else float("nan")
                row[f"std_{n}"] = float(np.std(acc)) if acc else float("nan")
            rows.append(row)
        return rows

    def _repr_html_(self) -> str:
        """Jupyter: the table and the plot the CLI writes (grouped bars with a from-scratch
        baseline, else accuracy against depth), drawn in memory."""
        from zfprobe.io.inline import block, img_tag, markdown_html
        from zfprobe.studies.transfer.render import bar_plot, depth_plot, markdown_table

        scratch = any(s.method == "scratch" for s in self.scores)
        plot = (bar_plot(self, "features + new softmax vs from scratch") if scratch
                else depth_plot(self, "linear probe per layer"))
        return block(f"transfer: {len(self.layers)} layer(s), {self.n_splits} split(s)",
                     markdown_html(markdown_table(self)), img_tag(plot))


def parse_per_class(value: str | Sequence[int]) -> list[int]:
    try:
        out = [int(v) for v in value.split(",")] if isinstance(value, str) else [int(v) for v in value]
    except ValueError:
        raise OptionError(f"cannot read --per-class '{value}'; write e.g. 15,30") from None
    if not out or min(out) < 1:
        raise OptionError("--per-class needs positive numbers of training images per class, e.g. 15,30")
    return out


def check_classes(labels: np.ndarray, names: dict, per_class: Sequence[int], test_given: bool) -> None:
    """Fail before any work: one class, or a class with too few images for the largest N."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise OptionError(f"the dataset has only one class ('{names.get(int(classes[0]), classes[0])}' if any); "
                          "a classifier needs at least two")
    need = max(per_class) + (0 if test_given else 1)
    short = [(names.get(int(c), str(c)), int(n)) for c, n in zip(classes, counts) if n < need]
    if short:
        name, n = short[0]
        rest = "" if test_given else " (one more than --per-class, to keep a test image)"
        raise OptionError(f"class '{name}' has {n} image(s), fewer than the {need} needed{rest} for --per-class "
                          f"{max(per_class)}; {len(short)} class(es) are short")


def draw_split(labels: np.ndarray, per_class: int, split: int, seed: int, test_given: bool):
    """(train positions, test positions) into ``labels``: ``per_class`` per class for training,
    seeded by (seed, N, split) so every N and split is reproducible on its own."""
    rng = np.random.default_rng([seed, per_class, split])
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:per_class])
        test.append(idx[per_class:])
    train = np.sort(np.concatenate(train))
    return train, (None if test_given else np.sort(np.concatenate(test)))


def pick_c(cv_results: dict) -> int:
    """Index of the chosen grid point (grids run in increasing C): the highest mean CV accuracy,
    scores within ``CV_TIE`` of the best count as tied, and of those the first (smallest C)."""
    scores = np.asarray(cv_results["mean_test_score"], dtype=np.float64)
    return int(np.flatnonzero(scores >= np.nanmax(scores) - CV_TIE)[0])


def fit_softmax(x: np.ndarray, y: np.ndarray, seed: int = 0, cs: Sequence[float] = DEFAULT_CS):
    """A fitted standardize + multinomial logistic regression; C by CV on (x, y) only, one
    thread, ties by :func:`pick_c`, so the result does not depend on load or thread count."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _fit_softmax(x, y, seed, cs)


def _fit_softmax(x: np.ndarray, y: np.ndarray, seed: int, cs: Sequence[float]):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    cs = sorted(cs)  # pick_c's tie rule reads the grid in increasing C
    if x.shape[0] * x.shape[1] > SGD_THRESHOLD:
        n = x.shape[0]
        clf = SGDClassifier(loss="log_loss", max_iter=50, tol=1e-4, random_state=seed)
        grid = {"clf__alpha": [1.0 / (c * n) for c in cs]}
    else:
        clf = LogisticRegression(max_iter=2000)
        grid = {"clf__C": list(cs)}
    pipe = Pipeline([("scale", StandardScaler()), ("clf", clf)])
    folds = int(min(3, np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds < 2:
            pipe.fit(x, y)
            return pipe, None
        search = GridSearchCV(pipe, grid, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1,
                              refit=pick_c)
        search.fit(x, y)
    best = search.best_params_
    c = best.get("clf__C")
    if c is None:
        c = 1.0 / (best["clf__alpha"] * x.shape[0])
    return search.best_estimator_, float(c)


def evaluate_transfer(features: dict[str, np.ndarray], labels: np.ndarray, per_class: Sequence[int], n_splits: int = 5,
                      seed: int = 0, test: tuple[dict[str, np.ndarray], np.ndarray] | None = None,
                      scratch: Callable[[np.ndarray, np.ndarray | None], float] | None = None,
                      names: dict | None = None, progress: bool = False, positions: np.ndarray | None = None) -> TransferResult:
    """Softmax on each layer's fixed features (and optionally the from-scratch net) over splits.

    ``features[layer]``: [n, D] rows aligned with ``labels``. ``test``: (features, labels) of a
    separate test set; without it each split tests on the images not drawn for training.
    ``scratch(train_positions, test_positions_or_None) -> accuracy``. ``positions``: dataset item
    index of each row (recorded in the splits; default 0..n-1).
    """
    from tqdm import tqdm

    per_class = parse_per_class(per_class)
    if n_splits < 1:
        raise OptionError("--splits must be at least 1")
    check_classes(labels, names or {}, per_class, test is not None)
    if test is not None:
        unknown = sorted(set(np.unique(test[1]).tolist()) - set(np.unique(labels).tolist()))
        if unknown:
            raise OptionError(f"the test set has class(es) the training set lacks: {unknown[:5]}")
    layers = list(features)
    positions = np.arange(len(labels)) if positions is None else positions
    result = TransferResult([], layers, per_class, n_splits, seed, separate_test=test is not None)
    jobs = len(per_class) * n_splits * (len(layers) + (scratch is not None))
    bar = tqdm(total=jobs, desc="training", unit="fit", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for n in per_class:
            for split in range(n_splits):
                train, rest = draw_split(labels, n, split, seed, test is not None)
                result.splits[f"{n}/{split}"] = positions[train].tolist()
                for layer in layers:
                    model, c = fit_softmax(features[layer][train], labels[train], seed + split)
                    if test is not None:
                        x_test, y_test = test[0][layer], test[1]
                    else:
                        x_test, y_test = features[layer][rest], labels[rest]
                    acc = float(np.mean(model.predict(x_test) == y_test))
                    result.scores.append(Score("softmax", layer, n, split, acc, len(train), len(y_test), c))
                    bar.update(1)
                if scratch is not None:
                    acc = float(scratch(train, rest))
                    n_test = len(test[1]) if test is not None else len(rest)
                    result.scores.append(Score("scratch", "scratch", n, split, acc, len(train), n_test))
                    bar.update(1)
    finally:
        bar.close()
    return result
