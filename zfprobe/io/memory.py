"""One memory budget for every batched job, and the peak live memory a program needs.

Mining, projections, occlusion, feature extraction and the report size their batches from one
budget (:func:`memory_budget`: ``--memory`` on the command line, else ``$ZFPROBE_MEMORY``, else
``DEFAULT_MEMORY``), each job from its share of it (``SHARES``), so memory stays bounded however
many images, seeds or positions a run has.

A batch's cost is the program's *peak* live memory, not the sum of its intermediates: a backend
frees each tensor after its last consumer has run, so at any step only the tensors still to be
read are held. :func:`liveness_peak` walks the nodes in their (topological) order with each
tensor's size and last use. onnxruntime needs more than that peak (its arena rounds allocations
up, convolutions take im2col workspaces, outputs are copied into numpy); ``RUNTIME_FACTOR`` is
the ratio of the resident-memory growth measured on a first batch to the liveness peak
(``benchmarks/scale.py --calibrate``; docs/mining.md has the figures).
"""
from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Sequence

MiB = 1024**2
GiB = 1024**3

DEFAULT_MEMORY = 2 * GiB  # arrays one run may hold at a time
ENV = "ZFPROBE_MEMORY"
# each job's share of the budget (features: the [N, D] matrices an extraction may hold, which
# outlive the batches, so they get the whole budget)
SHARES = {"projection": 0.5, "activations": 0.25, "occlusion": 0.25, "pictures": 0.25, "features": 1.0}
# resident-memory growth per batch item of onnxruntime on a first batch / liveness peak: 0.71-0.87
# forward, 1.00-1.27 reverse with onnxruntime's memory arena, up to 1.64 (MNIST relu3, reverse)
# without it (docs/mining.md); with margin
RUNTIME_FACTOR = 2.0
MAX_BATCH = 256

_override: int | None = None


def parse_memory(text: str | int) -> int:
    """Bytes from ``'2G'``, ``'1.5GiB'``, ``'512M'``, ``'800MB'`` or a plain number of bytes."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"cannot read memory size '{text}'; write e.g. 2G, 1.5GiB or 512M")
        value = int(float(m.group(1)) * 1024 ** "bkmgt".index((m.group(2) or "b").lower()))
    if value < 16 * MiB:
        raise ValueError(f"memory size '{text}' is below the 16M minimum")
    return value


def set_memory(value: str | int | None) -> None:
    """Override the budget for this process (``--memory``); None goes back to env / default."""
    global _override
    _override = None if value is None else parse_memory(value)


def memory_budget() -> int:
    """The total budget in bytes: ``--memory``, else ``$ZFPROBE_MEMORY``, else ``DEFAULT_MEMORY``."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV)
    if env:
        try:
            return parse_memory(env)
        except ValueError as exc:
            from zfprobe.errors import OptionError

            raise OptionError(f"${ENV}: {exc}") from None
    return DEFAULT_MEMORY


def budget_for(job: str) -> int:
    """Bytes one batch of ``job`` (a key of ``SHARES``) may hold."""
    return int(memory_budget() * SHARES[job])


def describe(n_bytes: float) -> str:
    """'1.3 GB' / '640 MB': sizes in user messages."""
    return f"{n_bytes / GiB:.1f} GB" if n_bytes >= GiB else f"{n_bytes / MiB:.0f} MB"


def liveness_peak(steps: Iterable[tuple[Sequence[str], Sequence[str]]], size: Callable[[str], int],
                  inputs: Sequence[str] = (), keep: Sequence[str] = ()) -> int:
    """Peak bytes held while running ``steps`` ((inputs, outputs) of each node, in topological
    order): a tensor lives from the step that makes it (``inputs`` from the start) to its last
    reader; those in ``keep`` (the outputs asked for) to the end. ``size(tensor)`` gives bytes (0
    for constants). At each step the node's inputs and its new outputs are live together."""
    steps = [(list(i), list(o)) for i, o in steps]
    last: dict[str, int] = {}
    for s, (ins, _) in enumerate(steps):
        for t in ins:
            if t:
                last[t] = s
    for t in keep:
        last[t] = len(steps)
    live = {t: size(t) for t in inputs}
    held = sum(live.values())
    peak = held
    for s, (ins, outs) in enumerate(steps):
        for t in outs:
            if t and t not in live:
                live[t] = size(t)
                held += live[t]
        peak = max(peak, held)
        for t in set(ins) | set(outs):
            if t in live and last.get(t, -1) <= s:  # read for the last time (or never read)
                held -= live.pop(t)
    return peak


def tensor_bytes(graph, tensor: str) -> int:
    """Bytes of one batch item of ``tensor`` in ``graph`` (0 for constants and unknown shapes)."""
    if tensor in graph.constants or tensor not in graph.shapes:
        return 0
    n = 1
    for d in tuple(graph.shapes[tensor])[1:]:
        n *= int(d)
    dtype = graph.dtypes.get(tensor)
    return n * (dtype.itemsize if dtype is not None else 4)


def forward_peak(graph, program, outputs: Sequence[str] = ()) -> int:
    """Peak live bytes per image of a forward ``program`` (sizes from ``graph``, which knows the
    shapes); ``outputs`` (default: the program's) are held to the end, as the caller reads them."""
    return liveness_peak(((n.inputs, n.outputs) for n in program.nodes), lambda t: tensor_bytes(graph, t),
                         inputs=[t for t in program.inputs], keep=list(outputs or program.outputs))


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError):
        return None


def peak_growth(fn):
    """(fn(), bytes): how far resident memory rose above its size before ``fn`` at its peak
    during it, or None where that cannot be measured (Linux: writing 5 to /proc/self/clear_refs
    resets the peak, VmHWM). Used to size batches of programs whose live memory the graph does
    not tell (the windowed deconvnet) from a first, small batch."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    out = fn()
    peak = _status_kib("VmHWM") if before is not None else None
    return out, (None if peak is None else max(0, peak - before) * 1024)


def batch_that_fits(per_item: float, budget: int, fixed: float = 0.0, cap: int = MAX_BATCH) -> int:
    """Items per batch such that ``fixed + n * per_item`` (bytes, times ``RUNTIME_FACTOR``) fits
    ``budget``; at least 1, at most ``cap``."""
    room = budget / RUNTIME_FACTOR - fixed
    return int(max(1, min(cap, room // max(1.0, per_item))))


def release_freed_memory() -> None:
    """Hand memory that was freed back to the system (glibc's ``malloc_trim``; no-op elsewhere).

    onnxruntime without its arena and numpy allocate each batch's arrays with malloc; glibc keeps
    freed heap chunks for reuse, and its mmap threshold rises after the first large free, so the
    freed batches of one layer stay resident while the next layer's batches (of other sizes) take
    new memory: on EfficientNet-Lite0 the report's resident size grew by ~400 MB per layer (1.9 GB
    after three) although its live arrays did not. Called between batches and stages.

    (A fixed mmap threshold, ``mallopt(M_MMAP_THRESHOLD, 4 MB)``, lowered the default report's
    peak by another 180 MB but cost 25% more CPU time in page faults: 272 against 218 s.)"""
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc = None
