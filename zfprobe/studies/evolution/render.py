"""Fig. 4 from an evolution store: one picture per layer (rows = feature maps, columns = epochs,
each tile the projection of that map's strongest unit at that epoch), the strongest activation
against the epoch (matplotlib), a CSV of every record and a summary of when each layer settles.

Tiles use zfprobe's signed mapping (``128 + 127 * p / max|p|`` per tile, grey = 0), cropped to a
square around the projection's non-zero support (the unit's receptive field) so that units of
upper layers are not lost in a large image.

"Settling" is measured, per layer and epoch, as the median over its maps of the similarity
between that epoch's projection and the last epoch's: the largest normalized cross-correlation
over shifts (1 = the same picture, wherever the strongest unit sits). A layer has settled at the
first recorded epoch from which the median stays at or above 0.8. When the strongest unit moves
to another image its picture changes, and that counts as a change, as it does to the eye in Fig. 4.
"""
from __future__ import annotations

import csv
import io

import numpy as np

from zfprobe.studies.evolution.compute import EvolutionStore, EvolutionStoreError
from zfprobe.io.pictures import contact_sheet, figure_png, projection_to_hwc, pyplot, signed_to_uint8

SETTLED = 0.8


def crop_support(tile: np.ndarray, minimum: int = 8, margin: int = 2) -> np.ndarray:
    """The square of ``tile`` [H, W, C] around its non-zero pixels (all of it when empty)."""
    mag = np.abs(tile).max(axis=2)
    if mag.max() <= 0:
        return tile
    ys, xs = np.nonzero(mag > 1e-3 * mag.max())
    h, w = mag.shape
    side = min(max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 + 2 * margin, min(h, w))
    side = max(side, min(minimum, h, w))
    cy, cx = (ys.max() + ys.min()) // 2, (xs.max() + xs.min()) // 2
    y0 = int(np.clip(cy - side // 2, 0, h - side))
    x0 = int(np.clip(cx - side // 2, 0, w - side))
    return tile[y0:y0 + side, x0:x0 + side]


def similarity(a: np.ndarray, b: np.ndarray, layout: str = "NCHW") -> float:
    """Shift-invariant similarity of two projections: the largest normalized cross-correlation
    over all relative shifts (scipy.signal.fftconvolve), summed over colour channels. 1 = the same
    picture anywhere in the image; the strongest unit may move between epochs, its picture is what
    Fig. 4 compares."""
    from scipy.signal import fftconvolve

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if layout != "NCHW":
        a, b = np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0  # a map silent at both epochs has not changed
    if na == 0 or nb == 0:
        return 0.0
    corr = sum(fftconvolve(a[c], b[c][::-1, ::-1], mode="full") for c in range(a.shape[0]))
    return float(corr.max() / (na * nb))


def similarity_to_last(store: EvolutionStore, records: list) -> np.ndarray:
    """[layers, epochs] median cosine similarity of each epoch's projections to the last epoch's."""
    last = records[-1]
    layout = store.meta.get("layout", "NCHW")
    out = np.zeros((len(store.layers), len(records)))
    for i in range(len(store.layers)):
        for j, r in enumerate(records):
            out[i, j] = np.median([similarity(p, q, layout) for p, q in zip(r.projections[i], last.projections[i])])
    return out


def settled_epoch(epochs: list[int], similarity: np.ndarray) -> int | None:
    for j in range(len(epochs)):
        if np.all(similarity[j:] >= SETTLED):
            return epochs[j]
    return None


def projection_tile(projection: np.ndarray, meta: dict) -> np.ndarray:
    """One projection of a store (``meta``: its meta.json) as the uint8 RGB tile Fig. 4 shows."""
    layout, order = meta.get("layout", "NCHW"), meta.get("channel_order", "RGB")
    return signed_to_uint8(crop_support(projection_to_hwc(projection, layout, order)))


def summaries(meta: dict, record) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, float]]]:
    """One record as TensorBoard summaries (framework-free; the training glue writes them at step
    ``record.epoch``): per layer and map, the projection tile as an image
    (``evolution/<layer>/c<channel>``) and its strongest activation as a scalar
    (``evolution/<layer>/strongest_c<channel>``, the curve of activation.png)."""
    images, scalars = [], []
    for i, layer in enumerate(meta["layers"]):
        for k, c in enumerate(layer["channels"]):
            images.append((f"evolution/{layer['name']}/c{c}", projection_tile(record.projections[i][k], meta)))
            scalars.append((f"evolution/{layer['name']}/strongest_c{c}", float(record.values[i][k])))
    return images, scalars


def layer_sheet(store: EvolutionStore, records: list, i: int, tile_size: int = 72) -> np.ndarray:
    layer = store.layers[i]
    tiles, captions = [], []
    for k, c in enumerate(layer["channels"]):
        for r in records:
            tiles.append(projection_tile(r.projections[i][k], store.meta))
            captions.append(f"c{c} ep{r.epoch} v={r.values[i][k]:.2g}")
    return contact_sheet(tiles, captions, columns=len(records), tile_size=tile_size,
                         title=f"{layer['name']}: strongest unit per map (rows) by epoch (columns)")


def activation_png(store: EvolutionStore, records: list) -> bytes:
    plt = pyplot()

    n = len(store.layers)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), dpi=110, squeeze=False)
    epochs = [r.epoch for r in records]
    for i, layer in enumerate(store.layers):
        ax = axes[0, i]
        values = np.array([r.values[i] for r in records])
        for k, c in enumerate(layer["channels"]):
            ax.plot(epochs, values[:, k], marker="o", ms=3, lw=1, label=f"c{c}")
        ax.set_title(layer["name"], fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("strongest activation over the probe set")
        if max(epochs) > 8 * max(1, min(epochs)):
            ax.set_xscale("log")
            ax.set_xticks(epochs, [str(e) for e in epochs])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
        if len(layer["channels"]) <= 12:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return figure_png(fig, tight=False)


def render(store_path: str, out_dir: str, tile_size: int = 72) -> list[str]:
    """Write evolution_<layer>.png per layer, activation.png, strongest.csv, summary.md, manifest.json."""
    from zfprobe.io.provenance import __version__
    from zfprobe.io.outputs import OutputStage

    store = EvolutionStore(store_path)
    epochs = store.epochs()
    if not epochs:
        raise EvolutionStoreError(f"the store in '{store_path}' has no recorded epoch yet")
    records = [store.read(e) for e in epochs]
    sim = similarity_to_last(store, records)
    with OutputStage(out_dir) as stage:
        files = []
        for i, layer in enumerate(store.layers):
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in layer["name"])
            files.append(stage.write_png(f"evolution_{safe}.png", layer_sheet(store, records, i, tile_size)))
        files.append(stage.write_bytes("activation.png", activation_png(store, records)))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["epoch", "layer", "channel", "value", "image", "y", "x", "similarity_to_last_median"])
        for j, r in enumerate(records):
            for i, layer in enumerate(store.layers):
                for k, c in enumerate(layer["channels"]):
                    w.writerow([r.epoch, layer["name"], c, f"{r.values[i][k]:.6g}", int(r.images[i][k]),
                                int(r.positions[i][k][0]), int(r.positions[i][k][1]), f"{sim[i, j]:.4f}"])
        files.append(stage.write_bytes("strongest.csv", buf.getvalue().encode()))
        lines = ["# Feature evolution during training", "",
                 f"{len(epochs)} recorded epoch(s): {', '.join(map(str, epochs))}; probe set of "
                 f"{store.meta.get('probe_images')} image(s); {len(store.layers)} layer(s).", "",
                 "| layer | maps | median similarity to the last epoch, by epoch | settled at epoch |",
                 "|---|---|---|---|"]
        settled = []
        for i, layer in enumerate(store.layers):
            s = settled_epoch(epochs, sim[i])
            settled.append(s)
            lines.append(f"| {layer['name']} | {len(layer['channels'])} | "
                         + " ".join(f"{v:.2f}" for v in sim[i]) + f" | {s if s is not None else 'not yet'} |")
        lines.append("")
        if len(epochs) > 1 and all(s is not None for s in settled):
            order = ("yes: each layer settles later than the one below" if all(a < b for a, b in zip(settled, settled[1:]))
                     else "they settle in layer order, some at the same recorded epoch" if settled == sorted(settled)
                     else "no: not in layer order")
            lines.append(f"Do lower layers settle first, as the paper says? {order} (settled at {settled}, "
                         f"similarity threshold {SETTLED}).")
        stage.write_bytes("summary.md", ("\n".join(lines) + "\n").encode())
        files.append("summary.md")
        manifest = {"zfprobe_version": __version__, "command": "evolution",
                    "model": dict(store.meta.get("model") or {}, path=(store.meta.get("model") or {}).get("source"), sha256=None),
                    "store": {"path": store.path, "format": store.meta.get("format"), "version": store.meta.get("version")},
                    "epochs": epochs, "layers": store.layers, "settled_epoch": dict(zip([l["name"] for l in store.layers], settled)),
                    "settled_threshold": SETTLED,
                    "display": {"mapping": "128 + 127 * p / max|p| per tile (grey = 0), cropped to the projection's support"}}
        files.append("manifest.json")
        manifest["files"] = files
        stage.write_json("manifest.json", manifest)
        return stage.commit()
