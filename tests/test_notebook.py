"""docs/notebook.ipynb runs in a real IPython kernel (nbclient) and shows its results inline:
pictures as image/png and text/html displays, no error, and no file in its working directory
but the one folder it asks ``save()`` to write."""
from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "docs", "notebook.ipynb")


def test_notebook_executes_and_shows_results_inline(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from PIL import Image

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "the notebook is stored unexecuted"
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"
                and "Traceback" in o.text]
    by_cell = [{k for o in c.outputs if o.output_type in ("execute_result", "display_data") for k in o.data}
               for c in code]
    visualize, occlude, mined, sheet, saved = by_cell[1:]
    assert "image/png" in visualize and "image/png" in sheet
    assert "text/html" in occlude and "text/html" in mined
    html = next(o.data["text/html"] for o in code[2].outputs if "text/html" in o.data)
    assert html.count("data:image/png;base64,") == 4  # the three maps and the projection

    # only what the notebook asked for was written, and the sheet it showed is the file it saved
    assert os.listdir(tmp_path) == ["visualize-out"]
    shown = next(o.data["image/png"] for o in code[1].outputs if "image/png" in o.data)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown))).convert("RGB"))
    written = np.asarray(Image.open(tmp_path / "visualize-out" / "contact_sheet.png").convert("RGB"))
    np.testing.assert_array_equal(shown, written)
    assert len([o for o in outputs if o.output_type == "display_data"]) == 0, "no stray matplotlib figures"
