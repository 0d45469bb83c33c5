"""CAMP's gated message passing (matcher option `interaction: "camp"`): hand-made cases, its loss and calibration."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.losses import hardest_bce_loss
from training.model.matcher import Matcher, MatcherConfig, PreparedImages

NAMES = ("red", "blue", "green", "circle", "square", "background")


def vec(*names: str) -> torch.Tensor:
    v = torch.zeros(8)
    for n in names:
        v[NAMES.index(n)] = 1.0
    return F.normalize(v, dim=0)


def _matcher() -> Matcher:
    return Matcher(MatcherConfig(dim=8, num_patches=4, max_words=4, word_context=False, patch_position=False,
                                 adapters=False, interaction="camp")).eval()


def _pair_inputs(m: Matcher) -> tuple[PreparedImages, torch.Tensor]:
    bg = vec("background")
    true = torch.stack([vec("red", "circle"), vec("blue", "square"), bg, bg])
    missing = torch.stack([vec("blue", "circle"), vec("green", "square"), bg, bg])  # no red anywhere
    img = PreparedImages(torch.stack([true, missing]), torch.zeros(2, 8))
    return img, torch.stack([vec("red"), vec("circle")])


def test_a_word_the_image_cannot_support_closes_its_gate_and_lowers_the_logit() -> None:
    """"red circle" against a red circle, and against an image with a circle but nothing red."""
    m = _matcher()
    img, words = _pair_inputs(m)
    txt = m.texts_from_words(words[None].expand(2, -1, -1), torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 8))
    with torch.no_grad():
        m.camp.gate_centre.fill_(0.3)  # where agreement starts, as training learns it (it starts at 0)
        _, fine, raw = m.pair_scores(img, txt)
        sim = torch.einsum("nkd,nld->nlk", img.patches, txt.words)
        out = m.camp(img.patches, txt.words, txt.mask, sim)
    assert raw[0] > raw[1] + 0.3
    torch.testing.assert_close(fine, torch.sigmoid(raw))  # no direction: σ(logit), as in training
    red_gate = out.word_gate[:, 0]
    assert red_gate[0] > 0.9 and red_gate[0] > red_gate[1] + 0.3
    # "red" attends to the red circle's patch in the true image
    assert int(out.word_attention[0, 0].argmax()) == 0
    torch.testing.assert_close(out.word_pool.sum(-1), torch.ones(2))


def test_one_query_against_candidates_equals_aligned_pairs_and_directions_use_their_calibration() -> None:
    m = _matcher()
    img, words = _pair_inputs(m)
    one = m.texts_from_words(words[None], torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 8))
    both = m.texts_from_words(words[None].expand(2, -1, -1), torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 8))
    with torch.no_grad():
        m.camp_calibration.copy_(torch.tensor([[2.0, -1.0], [0.5, 0.3]]))
        raw = m.pair_scores(img, both)[2]
        for d, (a, b) in zip(("t2i", "i2t"), ((2.0, -1.0), (0.5, 0.3)), strict=True):
            _, fine, raw_one = m.pair_scores(img, one, direction=d)  # 1 × N: the query is broadcast, not copied
            torch.testing.assert_close(raw_one, raw)
            torch.testing.assert_close(fine, torch.sigmoid(a * raw + b))
        matrix = m.score_matrix(img, one, "t2i")
    torch.testing.assert_close(matrix[:, 0], m.mix(torch.zeros(2), torch.sigmoid(2.0 * raw - 1.0), "t2i"))


def test_hardest_bce_loss_takes_the_positives_and_the_hardest_negative() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0, -3.0], [0.5, 0.5, 0.5, 0.5], [1.0, 2.0, 3.0, 4.0]])
    positive = torch.tensor([[True, False, False, False], [False] * 4, [True, False, False, False]])
    valid = torch.tensor([[True, True, True, True], [True] * 4, [True, True, False, True]])
    got = hardest_bce_loss(logits, positive, valid)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    # row 1: −log σ(2) + −log(1 − σ(1)); row 2 has no positive; row 3's hardest valid negative is 4, not 3
    want = ((sp(-2.0) + sp(1.0)) + (sp(-1.0) + sp(4.0))) / 2
    assert abs(float(got) - want) < 1e-5
    assert float(hardest_bce_loss(logits, torch.zeros_like(positive), valid)) == 0.0
