"""zfprobe: look inside trained CNNs the way Zeiler & Fergus did (ECCV 2014).

The core (this package) is framework-free: the graph, the deconvnet builder, seeds, rendering and
analyses. Framework code lives in ``zfprobe.adapters`` and is imported only when used.
"""
from zfprobe.errors import ZfprobeError
from zfprobe.probe import LayerInfo, Probe, load

__version__ = "0.1.0"
__all__ = ["load", "attach", "Probe", "LayerInfo", "ZfprobeError", "__version__"]


def attach(model, example=None, **options) -> Probe:
    """A :class:`Probe` for a live framework model: a torch ``nn.Module`` (with an example input
    or input shape) or a Keras model. The adapter is imported only here, when used."""
    kind = type(model).__module__.split(".")[0]
    if kind == "torch" or any(c.__module__.startswith("torch.nn") for c in type(model).__mro__):
        from zfprobe.adapters import torch_adapter

        return torch_adapter.attach(model, example, **options)
    if kind in ("keras", "tf_keras", "tensorflow") or any(c.__module__.startswith("keras") for c in type(model).__mro__):
        from zfprobe.adapters import keras_adapter

        return keras_adapter.attach(model, **options)
    raise TypeError(f"zfprobe.attach takes a torch nn.Module or a Keras model, not {type(model).__name__}; "
                    "for a file use zfprobe.load(path)")
