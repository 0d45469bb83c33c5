"""Bundles whose matcher has UARDA's relevance threshold or MGAN's region views are served by the same engine,
over HTTP.

Both act at query time only (the gate on the word–patch similarities, the views over the prepared patches), so
an index prepared for the demo bundle serves them as it is (same preparation fingerprint), and the reranked
scores change.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from service.config import Settings
from training.datasets import CaptionedImage
from training.model.bundle import load_bundle, save_bundle
from training.model.matcher import Matcher

from .conftest import LIMITS, index_synth, start_server

VARIANTS: dict[str, dict[str, Any]] = {"uarda": {"relevance": "uarda"}, "views": {"views": 4},
                                       "camp": {"interaction": "camp"}}


def _variant_bundle(demo: Path, out: Path, option: str) -> Matcher:
    b = load_bundle(demo, device="cpu")
    torch.manual_seed(0)
    m = Matcher(replace(b.matcher.config, **VARIANTS[option]))
    missing, unexpected = m.load_state_dict(b.matcher.state_dict(), strict=False)
    assert not unexpected and missing
    with torch.no_grad():
        if m.relevance_boundary is not None:
            m.relevance_boundary.fill_(0.3)
        if m.region_mix is not None:
            m.region_mix.fill_(0.5)
    save_bundle(out, b.backbone, m, include_backbone=True, name=option)
    return m


def _search(client: httpx.Client, text: str) -> list[dict[str, Any]]:
    r = client.post("/v1/search/images", json={"text": text, "limit": 10, "candidates": 30, "explain": True})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert all(x["fine_score"] is not None and x["explanation"] is not None for x in res)
    return res


@pytest.fixture(scope="module")
def demo_answers(model_dir: Path, synth: tuple[Path, list[CaptionedImage]], tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Path, dict[str, float]]:
    """An index built and searched with the demo bundle: (its data dir, the fine scores of one query)."""
    data = tmp_path_factory.mktemp("variant-data")
    demo = start_server(Settings(model=model_dir, data_dir=data, **LIMITS))  # type: ignore[arg-type]
    try:
        index_synth(demo.engine, *synth)
        with demo.client() as c:
            res = _search(c, synth[1][0].captions[0])
    finally:
        demo.stop()
    assert all(x["explanation"]["region"] == 0.0 for x in res)
    return data, {x["id"]: x["explanation"]["fine_raw"] for x in res}


@pytest.mark.parametrize("option", sorted(VARIANTS))
def test_the_service_reranks_with_each_matcher_variant(option: str, model_dir: Path, tmp_path: Path,
                                                       synth: tuple[Path, list[CaptionedImage]],
                                                       demo_answers: tuple[Path, dict[str, float]]) -> None:
    data, plain = demo_answers
    bundle = tmp_path / option
    m = _variant_bundle(model_dir, bundle, option)
    assert load_bundle(bundle, device="cpu").matcher.config == m.config
    srv = start_server(Settings(model=bundle, data_dir=data, **LIMITS))  # type: ignore[arg-type]  # the same index
    try:
        assert srv.engine.scorer.matcher.preparation_fingerprint() == m.preparation_fingerprint()
        with srv.client() as c:
            res = _search(c, synth[1][0].captions[0])
            stats = c.get("/v1/stats").json()
    finally:
        srv.stop()
    assert {k: stats["model"]["matcher"][k] for k in VARIANTS[option]} == VARIANTS[option]
    fine = {x["id"]: x["explanation"]["fine_raw"] for x in res}
    shared = set(fine) & set(plain)
    assert shared and any(abs(fine[i] - plain[i]) > 1e-3 for i in shared)  # the variant's maths is applied
    for x in res:
        ex = x["explanation"]
        if option == "camp":  # a logit: the words' pooling weights and message attentions are distributions
            assert abs(sum(w["weight"] for w in ex["words"]) - 1) < 1e-3
            assert all(abs(sum(map(sum, w["patches"])) - 1) < 1e-3 and 0 <= w["score"] <= 1 for w in ex["words"])
            assert all(w["picked_by"] is None for w in ex["words"])  # CAMP has no eq. 7
            continue
        for w in ex["words"]:  # eq. 7 over the grid; UARDA's gate leaves less than 1 where patches are irrelevant
            total = sum(map(sum, w["picked_by"]))
            assert total <= 1 + 1e-3 and (abs(total - 1) < 1e-3 or option == "uarda")
        parts = ex["patch_side"] + sum(w["contribution"] for w in ex["words"]) + ex["region"]
        assert abs(parts - ex["fine_raw"]) < 1e-4
        assert (ex["region"] != 0.0) == (option == "views")
