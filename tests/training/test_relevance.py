"""UARDA's relevance threshold (matcher option `relevance: "uarda"`): what the gate and its loss must do."""

from __future__ import annotations

import torch

from training.losses import relevance_loss
from training.model.matcher import Matcher, MatcherConfig


def _interaction(relevance: str, boundary: float = 0.5) -> Matcher:
    m = Matcher(MatcherConfig(dim=8, num_patches=4, max_words=4, word_context=False, patch_position=False,
                              adapters=False, relevance=relevance)).eval()
    if m.relevance_boundary is not None:
        with torch.no_grad():
            m.relevance_boundary.fill_(boundary)
    return m


def _patch_scores(m: Matcher, sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, length, _ = sim.shape
    mask = torch.ones(n, length, dtype=torch.bool)
    lda = torch.tensor([[0.0, 1.0]]).expand(n, 2)  # the plain mean of the word scores
    out = m.interact(sim, mask, lda, torch.full((n, length), 1 / length))
    return out.patch, out.word_scores


def test_a_word_without_a_relevant_patch_contributes_nothing() -> None:
    """"red circle": image A has a red circle (both words at 0.7 on one patch); image B has a circle that fits
    better (0.9) but no red (its nearest patch is another colour, 0.4). Without a threshold B's circle makes up
    for the missing colour and B wins; with UARDA's boundary at 0.5 "red" finds nothing in B and A wins."""
    sim = torch.zeros(2, 2, 4)  # [image, word (red, circle), patch]; patches 1–3 are background
    sim[0, :, 0] = torch.tensor([0.7, 0.7])
    sim[1, :, 0] = torch.tensor([0.4, 0.9])
    with torch.no_grad():
        plain, _ = _patch_scores(_interaction("none"), sim)
        gated, words = _patch_scores(_interaction("uarda"), sim)
    assert plain[1] > plain[0], plain  # the missing colour is outweighed
    assert gated[0] > gated[1] + 0.03, gated
    assert words[1, 0] < 0.05 < 0.6 < words[0, 0], words  # "red" in B scores ~0, in A about its cosine


def test_the_gate_starts_at_a_relu_threshold_and_is_soft_around_the_boundary() -> None:
    m = Matcher(MatcherConfig(dim=8, num_patches=4, max_words=4, relevance="uarda"))
    assert float(m.relevance_boundary.detach()) == 0.0  # SCAN's fixed threshold, then learned
    gate = m.relevance_gate(torch.tensor([-0.3, 0.0, 0.3]))
    torch.testing.assert_close(gate[1], torch.tensor(0.5))
    assert gate[0] < 0.01 and gate[2] > 0.99
    assert Matcher(MatcherConfig(dim=8, num_patches=4, max_words=4)).relevance_gate(torch.zeros(3)) is None


def test_relevance_loss_separates_the_distributions_around_the_boundary() -> None:
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True], [True, False, False]])
    positive = torch.tensor([True, True, False, False])
    valid = torch.ones(4, dtype=torch.bool)
    b = torch.tensor(0.5, requires_grad=True)
    separated = torch.tensor([[0.8, 0.7, 0.9], [0.9, 0.65, -5.0], [0.9, 0.8, 0.2], [0.3, 9.0, 9.0]])
    assert float(relevance_loss(separated, mask, positive, valid, b, 0.1).detach()) == 0.0  # padding never counts
    # a true pair's word below b + margin pulls b down; a false pair whose weakest word is above b − margin
    # pushes it up
    weak_pos = separated.clone()
    weak_pos[0, 1] = 0.3
    relevance_loss(weak_pos, mask, positive, valid, b, 0.1).backward()
    assert b.grad is not None and b.grad > 0
    b.grad = None
    all_there = separated.clone()
    all_there[2, 2] = 0.7
    evidence = all_there.requires_grad_()
    relevance_loss(evidence, mask, positive, valid, b, 0.1).backward()
    assert b.grad is not None and b.grad < 0
    assert evidence.grad is not None and evidence.grad[2, 2] > 0 and evidence.grad[2, :2].abs().sum() == 0
    # pairs left out of the losses (valid False) and empty captions add nothing
    skipped = torch.tensor([True, True, False, True])
    assert float(relevance_loss(all_there.detach(), mask, positive, skipped, b, 0.1).detach()) == 0.0
    empty = torch.zeros(4, 3, dtype=torch.bool)
    assert float(relevance_loss(weak_pos, empty, positive, valid, b, 0.1).detach()) == 0.0
