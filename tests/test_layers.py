"""The library stands alone: no module of `gvmgen` imports the orchestration (Prefect), the database
(SQLAlchemy), the object store (boto3) or our layers above it (storage, flows, cli), and importing
all of it loads none of them but boto3 (which `accelerate`, under transformers, imports itself)."""

import ast
import subprocess
import sys
from pathlib import Path

ABOVE = {"prefect", "sqlalchemy", "boto3", "botocore", "storage", "flows", "cli"}
LIBRARY = Path(__file__).resolve().parents[1] / "gvmgen"


def test_no_library_module_imports_a_layer_above_it():
    found = set()
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            found |= {(path.name, n) for n in names if n.split(".")[0] in ABOVE}
    assert found == set()


def test_importing_the_library_loads_no_layer_above_it():
    code = """
import importlib, pkgutil, sys
import gvmgen
for module in pkgutil.walk_packages(gvmgen.__path__, "gvmgen."):
    importlib.import_module(module.name)
print(sorted({name.split(".")[0] for name in sys.modules} & {"prefect", "sqlalchemy", "storage", "flows", "cli"}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
