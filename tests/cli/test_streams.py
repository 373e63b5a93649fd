"""No command binds sys.stdout or sys.stderr when it is defined.

`oidc-broker` (the client's entry point) reads the operator CLI's --help with standard output
redirected, importing the command modules inside that redirection: a default argument bound to
`sys.stdout` there would write every later answer into the discarded buffer (a command that
prints nothing and exits 0). Streams are looked up when a command runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "tools").rglob("*.py")) + sorted((ROOT / "layers" / "broker" / "oidc_broker").rglob("*.py"))


def bound_streams(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                for inner in ast.walk(default):
                    if (isinstance(inner, ast.Attribute) and inner.attr in ("stdout", "stderr", "stdin")
                            and isinstance(inner.value, ast.Name) and inner.value.id == "sys"):
                        found.append(f"{name}:{inner.lineno}: sys.{inner.attr} as a default")
    return found


def test_the_sources_are_found():
    assert any(p.name == "refresh.py" for p in SOURCES) and len(SOURCES) > 40


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_default_argument_is_a_standard_stream(path):
    assert bound_streams(path.read_text(), str(path.relative_to(ROOT))) == []


def test_the_check_finds_a_bound_stream():
    source = "import sys\ndef run(out=sys.stdout, *, err=sys.stderr, clock=None):\n    pass\nf = lambda s=sys.stdin: s\n"
    assert bound_streams(source, "sample.py") == ["sample.py:2: sys.stdout as a default",
                                                  "sample.py:2: sys.stderr as a default",
                                                  "sample.py:4: sys.stdin as a default"]
