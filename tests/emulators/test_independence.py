"""tools/emulators/: an emulator imports nothing from the broker, so a shared bug cannot pass both."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EMULATORS = Path(__file__).resolve().parents[2] / "tools" / "emulators"


def imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (inside functions too), relative ones with their dots."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_the_import_finder_sees_imports_inside_functions_and_importlib(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from oidc_broker.clouds import aws\n"
                      "import importlib\nimportlib.import_module('oidc_broker.config')\n")
    assert {"oidc_broker.clouds", "oidc_broker.config"} <= imported_modules(source)


@pytest.mark.parametrize("path", sorted(EMULATORS.rglob("*.py")), ids=lambda p: p.name)
def test_no_emulator_module_imports_the_broker(path):
    broker = sorted(n for n in imported_modules(path) if n.split(".")[0] in ("oidc_broker", "oidc_broker_cli"))
    assert broker == [], f"{path.name} imports {broker}: emulators must verify with their own code"


def test_there_are_emulator_modules_to_check():
    assert {"sts.py", "oidc.py", "ecr_public.py"} <= {p.name for p in EMULATORS.rglob("*.py")}
