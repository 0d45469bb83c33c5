"""The layering rule (docs/architecture.md): `training` imports no `indexer` or `service`, and `indexer`
imports no `service`. Every module of the three packages is read, so a new file cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"training": {"indexer", "service"}, "indexer": {"service"}, "service": set()}


def imported_packages(path: Path, own: str) -> set[str]:
    """Top-level packages a module imports, relative imports resolved against its own package `own`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            out.add(own if node.level else (node.module or "").split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_to_their_left(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    bad = {str(m.relative_to(REPO)): sorted(imported_packages(m, package) & FORBIDDEN[package]) for m in modules}
    bad = {m: pkgs for m, pkgs in bad.items() if pkgs}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an import of `service` from a training module is found, even inside a function."""
    fake = tmp_path / "probe.py"
    fake.write_text("import os\nfrom . import matcher\n\ndef f():\n    from service.engine import Engine\n"
                    "    return Engine\n")
    assert imported_packages(fake, "training") == {"os", "training", "service"}
