"""The independent references share nothing with the package they check."""

import ast
from pathlib import Path


def test_reference_imports_nothing_from_the_package():
    tree = ast.parse((Path(__file__).parent / "reference.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported and not any(name.split(".")[0] == "nnsight_persona" for name in imported), imported
    assert not any(name.split(".")[0] == "nnsight" for name in imported), imported
