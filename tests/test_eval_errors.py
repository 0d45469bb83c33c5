"""bench/eval_errors.py's split of text→image recall between partial and complete captions, on a hand-made case."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from eval_errors import partial_recall


def test_partial_and_complete_captions_are_scored_apart() -> None:
    # three captions × three candidates; caption 0 names part of its image (candidate 1 holds an unnamed object)
    gt = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    extra = torch.tensor([[False, True, True], [False, False, True], [False, False, False]])
    scores = torch.tensor([[0.9, 0.5, 0.8], [0.7, 0.2, 0.1], [0.3, 0.2, 0.1]])
    out = partial_recall(gt, extra, {"s": scores})
    assert out["share_of_captions"] == 33.33
    # caption 0: its image ranks third → R@1 0, R@5 100; caption 1 first; caption 2's image is not in the list
    assert out["s"] == {"partial_r1": 0.0, "partial_r5": 100.0, "complete_r1": 50.0, "complete_r5": 50.0}
