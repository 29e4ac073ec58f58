"""Runs zfprobe programs with onnxruntime, on CUDA when onnxruntime-gpu has a GPU, else on CPU.

A program is emitted as ONNX once (see :mod:`zfprobe.adapters.backends.onnx_export`) and its session is
cached, so repeated projections of the same layer pay for graph optimization only once.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from zfprobe.engine.graph import Graph
from zfprobe.adapters.backends.onnx_export import to_onnx


def import_onnxruntime():
    """``onnxruntime``, imported with file descriptor 2 muted: its import logs straight to stderr,
    before any log level can be set (e.g. "Failed to persist telemetry device ID" when HOME is not
    writable). Its errors still arrive, as the import's exception."""
    import sys

    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        import onnxruntime
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return onnxruntime


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def choose_providers(device: str = "auto") -> list[str]:
    """``auto``: CUDA when onnxruntime-gpu sees a GPU, else CPU; ``cpu`` / ``cuda`` force one."""
    have = available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in have:
            from zfprobe.errors import OptionError

            raise OptionError("device 'cuda' asked for, but onnxruntime has no CUDA provider here "
                              "(install zfprobe[gpu] on a machine with an NVIDIA GPU)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in have and _cuda_device_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def quiet_onnxruntime():
    """onnxruntime, with its own logging off: its errors become exceptions zfprobe reports."""
    ort = import_onnxruntime()

    ort.set_default_logger_severity(4)
    return ort


def _cuda_device_present() -> bool:
    # onnxruntime-gpu lists the CUDA provider even without a GPU and then falls back noisily.
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


class OnnxRuntimeBackend:
    """Executes programs; one cached ``InferenceSession`` per program object (and thread count)."""

    name = "onnxruntime"
    concurrent_runs = True  # run(..., threads=n) may be called from several threads at once

    def __init__(self, device: str = "auto", threads: int | None = None):
        self.providers = choose_providers(device)
        self.threads = threads
        self._sessions: dict[tuple, tuple[Graph, object]] = {}

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def session(self, program: Graph, threads: int | None = None):
        """The cached session of ``program``; ``threads``: its intra-op thread count (default:
        the backend's, else onnxruntime's, one per core)."""
        threads = threads or self.threads
        key = (id(program), threads)
        cached = self._sessions.get(key)
        if cached is not None and cached[0] is program:
            return cached[1]
        from zfprobe.adapters.backends.ort_rewrites import conv_transpose_as_conv

        ort = quiet_onnxruntime()
        model = to_onnx(conv_transpose_as_conv(program))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        # no arena: a session's arena keeps its largest batch's memory for the process's life,
        # so with a session per program (forward, each rule's deconvnet, occlusion) the peaks
        # would add up; without it each run's memory goes back when the run ends (issue 22)
        opts.enable_cpu_mem_arena = False
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=self.providers)
        self._sessions[key] = (program, sess)
        return sess

    def drop_sessions(self) -> None:
        """Forget every cached session (the next run of a program builds it again). A session
        holds its program's weights several times over (prepacked, rearranged by the rewrites):
        the report drops them after each layer, else a 3-layer report of EfficientNet-Lite0
        keeps ~0.5 GB of the deep layers' deconvnet sessions to its end."""
        self._sessions.clear()

    def run(self, program: Graph, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None,
            threads: int | None = None) -> list[np.ndarray]:
        """Run ``program``. ``threads`` picks a session with that many intra-op threads: several
        calls may run at once from different Python threads (onnxruntime's ``run`` is thread-safe
        and releases the GIL), e.g. one single-threaded run per core."""
        sess = self.session(program, threads)
        return sess.run(list(outputs or program.outputs), feeds)
