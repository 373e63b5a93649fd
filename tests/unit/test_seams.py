"""The seams of issue 9, held by tests: the generic core names no cloud, the core never imports
the shell, and the cloud registry costs no SDK import.

(The fake cloud that proves a new cloud needs no edit of the core is tests/unit/clouds/test_fake_cloud.py.)
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oidc_broker import clouds
from oidc_broker_cli import main as cli_main

LAYER = Path(__file__).resolve().parents[2] / "layers" / "broker" / "oidc_broker"
# The modules a new cloud must not edit: configuration (the public entry and its parts), subjects,
# the cache, the exchange and minting.
GENERIC = ["config.py", "model.py", "validation.py", "checks.py", "urls.py", "subject.py", "cache.py", "exchange.py",
           "minting.py"]
# Words that belong to one cloud: the registered names, and their services and vendors.
CLOUD_WORDS = sorted({*clouds.CLOUDS, "ecr", "sts", "iam", "amazon", "entra", "microsoft", "google", "gserviceaccount",
                      "azurecr"})
NAMES_A_CLOUD = re.compile(r"\b(" + "|".join(CLOUD_WORDS) + r")\b", re.IGNORECASE)


@pytest.mark.parametrize("module", GENERIC)
def test_no_generic_module_names_a_cloud(module):
    text = (LAYER / module).read_text()
    found = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if NAMES_A_CLOUD.search(line)]
    assert not found, f"{module} names a cloud: {found}"


@pytest.mark.parametrize("function", [cli_main.main, cli_main.cmd_trust_policy])
def test_the_cli_verb_list_names_no_cloud(function):
    source = inspect.getsource(function)
    assert not NAMES_A_CLOUD.search(source), NAMES_A_CLOUD.search(source).group(0)


def test_the_word_list_would_catch_a_cloud_named_in_a_module():
    assert NAMES_A_CLOUD.search('if target.provider == "aws":')
    assert NAMES_A_CLOUD.search("MAX_SUBJECT_BYTES = {'gcp': 127}")
    assert not NAMES_A_CLOUD.search("lists the hosts that exist")


def _module_imports(path: Path) -> set[str]:
    """The oidc_broker modules `path` imports at module scope (what runs on import)."""
    tree = ast.parse(path.read_text())
    package = ["oidc_broker", *path.relative_to(LAYER).parent.parts]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks import nothing at run time
            continue
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("oidc_broker")}


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in LAYER.rglob("*.py"):
        parts = path.relative_to(LAYER).with_suffix("").parts
        name = ".".join(["oidc_broker", *(parts[:-1] if parts[-1] == "__init__" else parts)])
        graph[name] = _module_imports(path)
    return {k: {m for m in v if m in graph} for k, v in graph.items()}


SHELL = {"oidc_broker.observe", "oidc_broker.api", "oidc_broker.handlers", "oidc_broker.runtime"}
CORE = ["oidc_broker.minting", "oidc_broker.exchange", "oidc_broker.cache", "oidc_broker.config", "oidc_broker.callers",
        "oidc_broker.clouds", "oidc_broker.clouds.aws", "oidc_broker.store", "oidc_broker.keys"]


@pytest.mark.parametrize("module", CORE)
def test_the_core_never_imports_logging_or_response_code(module):
    graph, seen, todo = _graph(), set(), [module]
    while todo:
        for imported in graph[todo.pop()] - seen:
            seen.add(imported)
            todo.append(imported)
    assert not seen & SHELL, f"{module} imports {sorted(seen & SHELL)}"


def test_the_import_graph_is_read_from_the_modules():
    graph = _graph()
    assert "oidc_broker.observe" in graph["oidc_broker.handlers"]
    assert "oidc_broker.minting" in graph["oidc_broker.exchange"]


def test_importing_the_cloud_registry_and_the_configuration_imports_no_sdk():
    code = ("import sys, oidc_broker.config, oidc_broker.clouds; "
            "print(sorted(m for m in ('boto3', 'botocore', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
