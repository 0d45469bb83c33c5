"""bench/eval_errors.py's split of text→image recall between partial and complete captions, on a hand-made case."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from eval_errors import partial_recall


def test_partial_and_complete_captions_are_scored_apart() -> None:
    # three captions × three candidates; caption 0 names part of its image (candidate 1); caption 2 is partial
    # too, and its image is not in its list (a miss)
    gt = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    partial = torch.tensor([True, False, True])
    scores = torch.tensor([[0.9, 0.5, 0.8], [0.7, 0.2, 0.1], [0.3, 0.2, 0.1]])
    out = partial_recall(gt, partial, {"s": scores})
    assert out["share_of_captions"] == 66.67
    # caption 0: its image ranks third → R@1 0, R@5 100; caption 2 missed; caption 1 first
    assert out["s"] == {"partial_r1": 0.0, "partial_r5": 50.0, "complete_r1": 100.0, "complete_r5": 100.0}
    # no complete caption: that group has no figure, not NaN
    none = partial_recall(gt, torch.ones(3, dtype=torch.bool), {"s": scores})["s"]
    assert none["complete_r1"] is None and none["partial_r5"] == 66.67
