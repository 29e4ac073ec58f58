"""Old import paths (``zfprobe.mining``, ``zfprobe.adapters.onnx_import``, ...) keep working for
one release: importing one warns (``DeprecationWarning``) and gives the module at its new home,
the same module object, so monkeypatching and ``isinstance`` see one module.

The modules moved when the flat package became engine/, io/, studies/<study>/ and
adapters/<role>/ (docs/architecture.md). Remove this file, and its install in ``zfprobe/__init__``,
in the release after next.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> new path, both below ``zfprobe.``
MOVED = {
    "ablation": "studies.ablation.compute",
    "ablation_render": "studies.ablation.render",
    "adapters.graph_trainer": "adapters.training.graph_trainer",
    "adapters.keras_adapter": "adapters.frontends.keras_adapter",
    "adapters.keras_training": "adapters.training.keras_training",
    "adapters.onnx_export": "adapters.backends.onnx_export",
    "adapters.onnx_external": "adapters.frontends.onnx_external",
    "adapters.onnx_import": "adapters.frontends.onnx_import",
    "adapters.onnxruntime_backend": "adapters.backends.onnxruntime_backend",
    "adapters.ort_rewrites": "adapters.backends.ort_rewrites",
    "adapters.ray_engine": "adapters.engines.ray_engine",
    "adapters.tf_backend": "adapters.backends.tf_backend",
    "adapters.torch_adapter": "adapters.frontends.torch_adapter",
    "adapters.torch_backend": "adapters.backends.torch_backend",
    "adapters.torch_training": "adapters.training.torch_training",
    "aliasing": "studies.filters.aliasing",
    "correspondence": "studies.correspondence.compute",
    "correspondence_render": "studies.correspondence.render",
    "datasets": "io.datasets",
    "deconv": "engine.deconv",
    "defaults": "studies.defaults",
    "evolution": "studies.evolution.compute",
    "evolution_render": "studies.evolution.render",
    "features": "studies.transfer.features",
    "filters": "studies.filters.compute",
    "filters_render": "studies.filters.render",
    "fusion": "engine.fusion",
    "graph": "engine.graph",
    "heads": "engine.heads",
    "image_files": "io.image_files",
    "image_transforms": "studies.invariance.transforms",
    "images": "io.images",
    "interrupts": "io.interrupts",
    "invariance": "studies.invariance.compute",
    "invariance_render": "studies.invariance.render",
    "inverses": "engine.inverses",
    "labelled": "io.labelled",
    "memory": "io.memory",
    "mining": "studies.mining.compute",
    "mining_render": "studies.mining.render",
    "occlusion": "studies.occlusion",
    "occlusion_render": "studies.occlusion.render",
    "outputs": "io.outputs",
    "preprocess": "io.preprocess",
    "program": "engine.program",
    "provenance": "io.provenance",
    "receptive_field": "engine.receptive_field",
    "render": "io.pictures",
    "rules": "engine.rules",
    "sanity": "studies.sanity.compute",
    "sanity_render": "studies.sanity.render",
    "seeds": "engine.seeds",
    "similarity": "studies.sanity.similarity",
    "transfer": "studies.transfer.compute",
    "transfer_render": "studies.transfer.render",
    "visualize": "studies.visualize.compute",
    "windowed": "engine.windowed",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)

    def exec_module(self, module) -> None:
        pass  # the module at its new home is already executed


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves an old ``zfprobe.<path>`` to the module at its new home, with a warning."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("zfprobe."):
            return None
        new = MOVED.get(fullname[len("zfprobe."):])
        if new is None:
            return None
        new_name = f"zfprobe.{new}"
        warnings.warn(f"'{fullname}' moved to '{new_name}'; the old path goes away in the next release",
                      DeprecationWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the standard finders: a real module wins)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
