"""The board runtime must never import torch (DESIGN section 2)."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["agent", "coordinator_free", "firmware_profiles", "agent.simulator",
                                    "agent.kernels", "coordinator_free.topology", "coordinator_free.spec",
                                    "predictor.cli"])
def test_runtime_does_not_import_torch(module):
    code = f"import sys, importlib; importlib.import_module({module!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_lower_layers_never_import_higher_ones():
    import ast
    import pathlib
    order = ["coordinator_free", "firmware_profiles", "agent", "predictor"]
    root = pathlib.Path(__file__).resolve().parents[1]
    for level, pkg in enumerate(order):
        for path in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    top = name.split(".")[0]
                    if top in order:
                        assert order.index(top) <= level, f"{path} imports {name}"
