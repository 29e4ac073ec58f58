"""zfprobe: look inside trained CNNs the way Zeiler & Fergus did (ECCV 2014).

The core (this package) is framework-free: the engine (graph, deconvnet builder, op table), I/O,
and the studies. Framework code lives in ``zfprobe.adapters`` and is imported only when used:
:func:`load` and :func:`attach` pick the front-end for a file or a live model.
"""
from __future__ import annotations

import os

from zfprobe import legacy_paths
from zfprobe.errors import ModelLoadError, ZfprobeError
from zfprobe.io.provenance import __version__

__all__ = ["load", "attach", "Probe", "LayerInfo", "ZfprobeError", "__version__"]

legacy_paths.install()


def __getattr__(name: str):
    """``Probe`` and ``LayerInfo`` are imported on first use: ``import zfprobe`` stays light, so
    the command line is ready to handle Ctrl-C within milliseconds of starting."""
    if name in ("Probe", "LayerInfo"):
        from zfprobe import probe

        return getattr(probe, name)
    raise AttributeError(f"module 'zfprobe' has no attribute {name!r}")


def load(path: str | os.PathLike, input_shape: tuple[int, ...] | None = None, device: str = "auto",
         backend: str | None = None) -> "Probe":
    """Open a model file (.onnx; .keras/.h5 through the Keras adapter) as a :class:`Probe`."""
    from zfprobe.probe import Probe

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".keras", ".h5", ".hdf5"):
        from zfprobe.adapters.frontends import keras_adapter  # loaded only when used

        return keras_adapter.load(path, device=device, input_shape=input_shape, backend=backend)
    if os.path.isdir(path):
        raise ModelLoadError(f"model '{path}' is a directory, not a model file")
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file '{path}' does not exist")
    from zfprobe.adapters.backends.onnxruntime_backend import OnnxRuntimeBackend
    from zfprobe.adapters.frontends.onnx_import import import_onnx
    from zfprobe.io.preprocess import default_preprocessing

    graph = import_onnx(path, input_shape)
    shape = graph.shape(graph.inputs[0])
    prep = default_preprocessing(shape, path) if len(shape) == 4 else None
    if backend == "torch":  # torch kernels instead of onnxruntime (weights from the file)
        from zfprobe.adapters.backends.torch_backend import TorchBackend

        return Probe(graph, TorchBackend(device=device), source=path, preprocessing=prep)
    return Probe(graph, OnnxRuntimeBackend(device), source=path, preprocessing=prep)


def attach(model, example=None, **options) -> "Probe":
    """A :class:`Probe` for a live framework model: a torch ``nn.Module`` (with an example input
    or input shape) or a Keras model. The adapter is imported only here, when used."""
    kind = type(model).__module__.split(".")[0]
    if kind == "torch" or any(c.__module__.startswith("torch.nn") for c in type(model).__mro__):
        from zfprobe.adapters.frontends import torch_adapter

        return torch_adapter.attach(model, example, **options)
    if kind in ("keras", "tf_keras", "tensorflow") or any(c.__module__.startswith("keras") for c in type(model).__mro__):
        from zfprobe.adapters.frontends import keras_adapter

        return keras_adapter.attach(model, **options)
    raise TypeError(f"zfprobe.attach takes a torch nn.Module or a Keras model, not {type(model).__name__}; "
                    "for a file use zfprobe.load(path)")
