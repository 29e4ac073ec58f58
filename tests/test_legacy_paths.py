"""Old import paths keep working for one release: each resolves, with a DeprecationWarning, to
the very module object at its new home (so monkeypatching either name patches both)."""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from zfprobe.legacy_paths import MOVED

# the frameworks some adapters import at module level
_NEEDS = {"adapters.tf_backend": "tensorflow", "adapters.keras_adapter": "tensorflow", "adapters.keras_training": "tensorflow",
          "adapters.ray_engine": "ray"}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_is_the_new_module(old):
    if old in _NEEDS:
        pytest.importorskip(_NEEDS[old])
    new = importlib.import_module(f"zfprobe.{MOVED[old]}")
    sys.modules.pop(f"zfprobe.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"zfprobe.{old}")
    assert module is new
    assert any(issubclass(w.category, DeprecationWarning) and f"zfprobe.{MOVED[old]}" in str(w.message) for w in caught)


def test_from_import_of_a_name_through_an_old_path():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    from zfprobe.mining import mine\nexcept DeprecationWarning as e:\n    print('warned:', e)\n"
            "warnings.simplefilter('ignore')\nfrom zfprobe.mining import mine\n"
            "from zfprobe.studies.mining.compute import mine as new\nprint(mine is new)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned: 'zfprobe.mining' moved to 'zfprobe.studies.mining.compute'" in out
    assert out.strip().endswith("True")


def test_new_paths_import_without_warnings():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "import zfprobe, zfprobe.studies.mining.compute, zfprobe.adapters.frontends.onnx_import, zfprobe.cli.main\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_name_that_never_existed_still_fails():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("zfprobe.no_such_module")
