"""zfprobe: look inside trained CNNs the way Zeiler & Fergus did (ECCV 2014).

The core (this package) is framework-free: the graph, the deconvnet builder, seeds, rendering and
analyses. Framework code lives in ``zfprobe.adapters`` and is imported only when used.
"""
from zfprobe.errors import ZfprobeError
from zfprobe.probe import LayerInfo, Probe, load

__version__ = "0.1.0"
__all__ = ["load", "Probe", "LayerInfo", "ZfprobeError", "__version__"]
