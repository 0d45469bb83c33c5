"""docs/api.md's examples run as written: scripts/api_examples.sh against a live server (real HTTP), and its
commands are exactly the transcript's (so the docs cannot drift from what runs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from service.config import Settings
from service.serve import prepare_demo
from training.synth import generate

from .conftest import start_server

REPO = Path(__file__).resolve().parents[2]
DELIBERATE_ERRORS = {"invalid_request", "unsupported_media_type", "not_found"}  # the last three examples


def _normalise(cmd: str, url: str) -> str:
    cmd = cmd.replace(url, "URL")
    cmd = re.sub(r"\S*images/(test|val)/", r"DIR-\1/", cmd)
    cmd = re.sub(r"\d{6}\.png", "FILE.png", cmd)
    cmd = re.sub(r'\\?"image_id\\?": \\?"\d+\\?"', '"image_id": ID', cmd)
    return re.sub(r"jobs/[0-9a-f-]{36}", "jobs/JOB", cmd)


def _blocks(text: str) -> list[tuple[str, str]]:
    parts = re.split(r"^\$ ", text, flags=re.M)[1:]
    return [(p.split("\n", 1)[0], p.split("\n", 1)[1] if "\n" in p else "") for p in parts]


def test_docs_api_examples_run_against_a_live_server(tmp_path: Path, model_dir: Path) -> None:
    data = tmp_path / "data"
    generate(data / "synth", seed=0, train=0, val=4, test=24)
    srv = start_server(Settings(model=model_dir, data_dir=tmp_path / "index"))
    try:
        prepare_demo(srv.engine, data / "synth")
        first = sorted((data / "synth" / "images" / "test").iterdir())[0]
        env = {**os.environ, "IMAGE_ID": str(int(first.stem))}
        run = subprocess.run(["bash", str(REPO / "scripts" / "api_examples.sh"), srv.url], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        srv.stop()
    assert run.returncode == 0, run.stderr
    ran = _blocks(run.stdout)
    doc = (REPO / "docs" / "api.md").read_text()
    transcript = doc[doc.index("## Examples, as run"):]
    transcript = transcript[transcript.index("```text\n") + 8:]
    documented = _blocks(transcript[:transcript.index("\n```")])
    assert [_normalise(c, srv.url) for c, _ in ran] == [_normalise(c, "http://127.0.0.1:8000") for c, _ in documented]

    codes = []
    for _, answer in ran:
        try:  # the script trims long answers to 1500 characters: those are no error bodies
            body = json.loads(answer)
        except json.JSONDecodeError:
            continue
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            codes.append(body["error"]["code"])
    assert set(codes) == DELIBERATE_ERRORS, codes  # every other example answered without an error
    answers = dict(ran)
    job = next(a for c, a in ran if "/v1/jobs/" in c and "index" not in c)
    assert '"state": "succeeded"' in job and '"indexed_images": 1' in job
    assert any(a.strip() == "204" for c, a in ran if "DELETE" in c and "bulk-1" in c)
    assert "200 image/png" in next(a for c, a in answers.items() if "/content" in c)
