"""The layering rule (docs/architecture.md): `training` imports no `indexer` or `service`, and `indexer`
imports no `service`; HTTP stays at the service's edge. Every module of the packages is read, so a new file
cannot slip past."""

from __future__ import annotations

import ast
import re
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


HTTP_EDGE = {"service/errors.py"}  # and everything under service/api/
NOT_STATUSES = {"service/metrics.py"}  # its histogram buckets count candidates (… 200, 500, 1000)
STATUSES = {*range(400, 419), 421, 422, 423, 425, 426, 428, 429, 431, 451, *range(500, 512)}


def http_statuses(path: Path) -> list[str]:
    """Numbers in a module (strings and comments included) that are HTTP error statuses."""
    return [n for n in re.findall(r"(?<![\w.])\d{3}(?![\w.])", path.read_text()) if int(n) in STATUSES]


def test_only_the_http_edge_speaks_http() -> None:
    """The engine and the rest of the service raise domain errors (service/exceptions.py); errors.py maps them
    to statuses, and the routes build the URLs."""
    service = REPO / "service"
    inner = [m for m in sorted(service.rglob("*.py")) if str(m.relative_to(REPO)) not in HTTP_EDGE | NOT_STATUSES
             and (service / "api") not in m.parents]
    assert inner, "no service modules found"
    bad = {str(m.relative_to(REPO)): http_statuses(m) for m in inner}
    assert {m: s for m, s in bad.items() if s} == {}
    assert "/v1" not in (service / "engine.py").read_text()


def test_the_status_check_sees_a_status(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('raise ApiError(404, "x")\nlimit = 4096\nratio = 0.413\nport = 8000\n')
    assert http_statuses(probe) == ["404"]
