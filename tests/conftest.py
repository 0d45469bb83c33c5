"""Shared fixtures: a tiny random-init backbone (no weights are downloaded), real COCO photos."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from training.model.backbone import Backbone
from training.model.defaults import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"

logging.getLogger().setLevel(logging.ERROR)  # open_clip warns on every deliberate random init


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    return Backbone.load(TINY_MODEL, from_scratch=True, seed=0, device="cpu")


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "captions.json").is_file():
        pytest.fail(f"real-photo fixture missing: {COCO_MINI} (the shared data folder must sit beside the repo)")
    return COCO_MINI
