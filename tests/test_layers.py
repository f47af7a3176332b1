"""The import direction of docs/DESIGN: atesd <- envs <- recipes, and controllers see only atesd.progress.

Parsed from the source (every import statement, lazy ones inside functions included), so a layer
violation fails here even where no test happens to execute the offending line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("atesd", "envs", "controllers", "recipes", "tests")

# package -> (project packages it may import, atesd modules it may import when atesd is not allowed whole)
ALLOWED = {
    "atesd": ({"atesd"}, None),
    "envs": ({"atesd", "envs"}, None),
    "controllers": ({"controllers"}, {"atesd.progress"}),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _violations(package: str) -> list[str]:
    packages, atesd_modules = ALLOWED[package]
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top not in PROJECT or top in packages:
                continue
            if atesd_modules is not None and top == "atesd" and module in atesd_modules:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package):
    assert _violations(package) == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "controllers"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from atesd.engine import DistillEngine\n    import envs\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert _violations("controllers") == [
        "controllers/bad.py:2 imports atesd.engine",
        "controllers/bad.py:3 imports envs",
    ]
