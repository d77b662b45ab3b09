from pathlib import Path

import papermill

NOTEBOOKS = Path(__file__).parents[3] / "notebooks"


def test_format_explorer_notebook_runs_headless(tmp_path):
    out = tmp_path / "out.ipynb"
    nb = papermill.execute_notebook(
        str(NOTEBOOKS / "format_explorer.ipynb"),
        str(out),
        parameters={"specs": ["mxfp8", "nvfp4"], "sample": "laplace", "size": 64},
        kernel_name="python3",
        progress_bar=False,
    )
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("hadamard16 e2m1 block16" in t for t in tables)  # nvfp4 with the transform
