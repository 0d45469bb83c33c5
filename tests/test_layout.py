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


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Dotted names a module imports (`module.name` for a from-import, since the name may be a submodule),
    relative imports resolved against the module's own place under `root`."""
    package = list(path.relative_to(root).parts[:-1])  # a package's __init__ and its modules alike
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


def imported_packages(path: Path, root: Path = REPO) -> set[str]:
    """Top-level packages a module imports (relative imports resolve to the module's own package)."""
    return {name.split(".")[0] for name in imported_modules(path, root)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_to_their_left(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules found under {package}/"
    bad = {str(m.relative_to(REPO)): sorted(imported_packages(m) & FORBIDDEN[package]) for m in modules}
    bad = {m: pkgs for m, pkgs in bad.items() if pkgs}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}: {bad}"


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an import of `service` from a training module is found, even inside a function."""
    fake = tmp_path / "training" / "probe.py"
    fake.parent.mkdir()
    fake.write_text("import os\nfrom . import matcher\n\ndef f():\n    from service.engine import Engine\n"
                    "    return Engine\n")
    assert imported_packages(fake, tmp_path) == {"os", "training", "service"}


def _training_imports(package: str) -> dict[str, list[str]]:
    found = {str(m.relative_to(REPO)): sorted(n for n in imported_modules(m) if n.split(".")[0] == "training")
             for m in sorted((REPO / package).rglob("*.py"))}
    assert found, f"no modules found under {package}/"
    return found


def test_the_model_subpackage_stands_alone() -> None:
    """training/model/ is what the service runs; it imports nothing from training proper (losses, loops)."""
    bad = {m: [n for n in names if not n.startswith("training.model")]
           for m, names in _training_imports("training/model").items()}
    assert {m: n for m, n in bad.items() if n} == {}


# what the service may use of training: the model, the shared dataset readers, and the commands it exposes
# (the console script's train/eval/explain/synth, their model options, and the demo's data generator)
SERVICE_USES = ("training.model", "training.datasets", "training.cli", "training.cli_args", "training.synth")


def test_the_service_uses_the_model_not_training_proper() -> None:
    bad = {m: [n for n in names if not n.startswith(SERVICE_USES)] for m, names in _training_imports("service").items()}
    assert {m: n for m, n in bad.items() if n} == {}


def test_the_module_resolver_resolves_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "training" / "model" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from .tokens import pad_words\nfrom ..losses import x\nfrom . import matcher\n"
                     "import training.train\n\ndef f():\n    from training import cli\n")
    assert imported_modules(probe, tmp_path) == {"training.model.tokens.pad_words", "training.losses.x",
                                                 "training.model.matcher", "training.train", "training.cli"}


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


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 60
LONG_MODULE_NOTE = "Longer than the 350 lines the project aims for"  # said, with the reason, in the docstring


def test_modules_and_functions_stay_short_or_say_why() -> None:
    """Every module of the three packages is at most 350 lines unless its docstring says why, and no function
    is over 60 lines (signature and docstring included)."""
    long_modules, long_functions = {}, {}
    for package in ("training", "indexer", "service"):
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            tree = ast.parse(text, filename=str(path))
            name = str(path.relative_to(REPO))
            lines = len(text.splitlines())
            if lines > MAX_MODULE_LINES and LONG_MODULE_NOTE not in (ast.get_docstring(tree) or ""):
                long_modules[name] = lines
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long_functions[f"{name}:{node.name}"] = n
    assert long_modules == {}, f"over {MAX_MODULE_LINES} lines without a reason at the top: {long_modules}"
    assert long_functions == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
