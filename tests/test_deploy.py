"""Docker and compose cannot run here (no engine): validate them, and run the commands they run."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.cli import build_parser, main
from training.synth import generate

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def test_compose_file_follows_the_compose_specification() -> None:
    r = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                        str(REPO / "compose.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    r = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_share_the_install_script_and_run_unprivileged(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    assert "scripts/install.sh" in text and "\nUSER 10001" in text and "HEALTHCHECK" in text
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for src in line.split()[2:-1]:
                assert (REPO / src).exists(), f"{dockerfile.name} copies {src}, which is not in the repo"


def test_compose_commands_are_valid_cli_invocations() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    assert {"qdrant", "indexer", "api", "api-gpu"} <= set(services)
    assert services["api"]["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    parser = build_parser()
    for name in ("indexer", "api", "api-gpu"):
        cmd = services[name]["command"]
        cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
        assert cmd[0] == "finesearch"
        args = parser.parse_args(cmd[1:])
        assert args.qdrant_url == "http://qdrant:6333"


def test_demo_indexing_command_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The compose indexer's command, on the embedded store: index the demo split, then again (nothing new)."""
    synth = tmp_path / "synth"
    generate(synth, seed=0, train=0, val=0, test=30)
    args = ["demo", "--no-serve", "--data-dir", str(tmp_path / "data"), "--synth-dir", str(synth)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "indexed 30 images and 150 captions" in out and "hard cases" in out
    assert main(args) == 0
    assert "indexed 0 images and 0 captions (180 already there)" in capsys.readouterr().out


def test_demo_hard_cases_come_first_only_with_rerank(tmp_path: Path) -> None:
    """The demo's promise, on the demo's own data (the default synthetic dataset, seed 0, its test split):
    some hard-case captions find their image first with the matcher and not with global similarity
    alone; checked again through real HTTP."""
    import httpx

    from service.config import DEMO_MODEL, Settings
    from service.serve import prepare_demo
    from tests.service.conftest import start_server

    synth = tmp_path / "synth"
    generate(synth, seed=0)  # exactly what `finesearch demo` generates
    srv = start_server(Settings(model=DEMO_MODEL, data_dir=tmp_path / "data"))
    try:
        wins, hard = prepare_demo(srv.engine, synth)
        assert len(hard) == 4 and wins, "no hard case where reranking puts the right image first"
        doc = {c["raw"]: str(s["imgid"]) for s in __import__("json").loads(
            (synth / "dataset.json").read_text())["images"] for c in s["sentences"]}  # wins are unique captions
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for caption in wins:
                on = c.post("/v1/search/images", json={"text": caption, "limit": 1}).json()["results"][0]
                off = c.post("/v1/search/images", json={"text": caption, "limit": 1, "rerank": False}).json()
                assert on["id"] == doc[caption] and off["results"][0]["id"] != doc[caption]
    finally:
        srv.stop()
