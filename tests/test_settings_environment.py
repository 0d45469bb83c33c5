"""Environment handling: `Settings` (service/config.py) is the only configuration source of every command.

Flags win; then FINESEARCH_* variables; then a .env file in the working directory; then the defaults. The
subcommands of `training` and `indexer` read no environment themselves, so `index` and `serve` agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.cli import build_parser, main
from service.config import Settings

REPO = Path(__file__).resolve().parents[1]


def filled(argv: list[str]) -> object:
    args = build_parser().parse_args(argv)
    Settings().fill_args(args)
    return args


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No FINESEARCH_* variable and no .env file from the developer's shell leaks into these tests."""
    import os

    for name in [k for k in os.environ if k.startswith("FINESEARCH_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_only_the_settings_module_reads_the_environment() -> None:
    hits = sorted(str(p.relative_to(REPO)) for pkg in ("training", "indexer", "service")
                  for p in (REPO / pkg).rglob("*.py") if re.search(r"\bos\.environ\b|\bos\.getenv\b", p.read_text()))
    assert hits == ["service/config.py"]


def test_index_reads_variables_and_flags_win(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINESEARCH_QDRANT_PREFIX", "team_")
    monkeypatch.setenv("FINESEARCH_KEEP_RAW_TOKENS", "false")
    monkeypatch.setenv("FINESEARCH_DATA_DIR", str(clean_env / "from-env"))
    monkeypatch.setenv("FINESEARCH_MAX_TEXT_CHARS", "50")
    args = filled(["index", "images", "photos", "--data-dir", str(clean_env / "flag")])
    assert args.qdrant_prefix == "team_" and args.keep_raw_tokens is False
    assert args.data_dir == clean_env / "flag"  # the flag, not the variable
    assert args.device == "auto" and args.precision == "auto" and args.features == "bank"
    assert args.settings.max_text_chars == 50  # the limits the service enforces bind the CLI too
    assert filled(["index", "images", "photos", "--keep-raw-tokens"]).keep_raw_tokens is True


def test_a_dotenv_file_configures_index_and_eval_as_it_configures_serve(clean_env: Path) -> None:
    (clean_env / ".env").write_text("FINESEARCH_DEVICE=cpu\nFINESEARCH_QDRANT_URL=http://qdrant:6333\n"
                                    "FINESEARCH_PORT=9123\n")
    assert filled(["index", "images", "photos"]).qdrant_url == "http://qdrant:6333"
    assert filled(["eval", "--data", "d.json", "--images", "i", "--format", "karpathy"]).device == "cpu"
    serve = filled(["serve"])
    assert (serve.device, serve.qdrant_url, serve.port, serve.host) == ("cpu", "http://qdrant:6333", 9123,
                                                                        "127.0.0.1")


def test_migrate_target_key_defaults_to_the_qdrant_key(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINESEARCH_QDRANT_API_KEY", "s3cret")
    assert filled(["migrate", "--to", "http://q:6333"]).to_api_key == "s3cret"
    assert filled(["migrate", "--to", "http://q:6333", "--to-api-key", "other"]).to_api_key == "other"


def test_serve_flags_override_settings_without_touching_the_environment(clean_env: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from service.serve import settings_from

    monkeypatch.setenv("FINESEARCH_FEATURES", "qdrant")
    args = filled(["serve", "--device", "cpu", "--data-dir", str(clean_env / "d")])
    before = dict(os.environ)
    s = settings_from(args)
    assert (s.device, s.data_dir, s.features) == ("cpu", clean_env / "d", "qdrant")
    assert dict(os.environ) == before  # one worker: nothing exported


def test_a_malformed_variable_is_one_clear_error(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FINESEARCH_PORT", "eighty")
    assert main(["synth", "--out", str(clean_env / "s"), "--train", "0", "--val", "0", "--test", "1"]) == 2
    err = capsys.readouterr().err
    assert "FINESEARCH_PORT" in err and "Traceback" not in err
