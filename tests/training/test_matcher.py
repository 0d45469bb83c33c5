from __future__ import annotations

import torch
import torch.nn.functional as F

from training.matcher import LDA, Matcher, MatcherConfig, PreparedImages, PreparedTexts, triplet_loss

CFG = MatcherConfig(dim=16, num_patches=12, max_words=10, top_k=5, selector_hidden=8, adapter_hidden=8,
                    lda_hidden=8, num_samples=50)


def _inputs(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    p = F.normalize(torch.randn(b, 12, 16, generator=g), dim=-1)
    v = F.normalize(torch.randn(b, 16, generator=g), dim=-1)
    w = F.normalize(torch.randn(b, 7, 16, generator=g), dim=-1)
    lengths = torch.tensor([7, 3, 1, 5][:b])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    w = w * mask[..., None]
    t = F.normalize(torch.randn(b, 16, generator=g), dim=-1)
    return p, v, w, mask, t


def _trained_like(seed: int = 0) -> Matcher:
    """Random non-zero weights everywhere (adapters too), so no branch is trivially identity."""
    torch.manual_seed(seed)
    m = Matcher(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def reference_score(m: Matcher, pi: PreparedImages, pt: PreparedTexts, i: int, j: int) -> torch.Tensor:
    """Per-pair loops over patches and words, straight from DESIGN.md's equations."""
    n = int(pt.mask[j].sum())
    words = pt.words[j, :n]
    patches = pi.patches[i]
    c_mat = patches @ words.T  # K × n
    s_p = []
    for r in range(c_mat.shape[0]):
        c = c_mat[r]
        inner = torch.zeros(CFG.max_words)
        inner[:n] = torch.softmax(c, 0)
        alpha = torch.softmax(m.lin1(inner)[:n], 0)
        s_p.append((alpha * c).sum())
    s_p_t = torch.stack(s_p)
    beta = torch.softmax(m.lin2(torch.softmax(s_p_t, 0)), 0)
    s_w2p = (beta * s_p_t).sum()
    s_w = []
    for col in range(n):
        c = c_mat[:, col]
        alpha3 = torch.softmax(m.lin3(torch.softmax(c, 0)), 0)
        s_w.append((alpha3 * c).sum())
    s_w_t = torch.stack(s_w)
    w_sum, w_mean = pt.lda[j]
    s_p2w = w_sum * s_w_t.sum() + w_mean * s_w_t.mean()
    s_patch = (s_w2p + s_p2w) / 2
    s_global = pi.globals[i] @ pt.globals[j]
    share = torch.sigmoid(m.fusion_mix)
    return (CFG.fusion_global + CFG.fusion_patch) * ((1 - share) * s_global + share * s_patch)


def test_batched_scorer_equals_per_pair_reference() -> None:
    m = _trained_like()
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        pi, pt = m.prepare_images(p, v), m.prepare_texts(w, mask, t)
        matrix = m.score_matrix(pi, pt)
        pairs, _ = m.score_pairs(pi, pt)
        for i in range(4):
            for j in range(4):
                torch.testing.assert_close(matrix[i, j], reference_score(m, pi, pt, i, j), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pairs, matrix.diag())
        # one query against k candidates, both directions
        q = PreparedTexts(pt.words[1:2], pt.mask[1:2], pt.globals[1:2], pt.lda[1:2])
        torch.testing.assert_close(m.rank_images(q, pi)[0], matrix[:, 1])
        qi = PreparedImages(pi.patches[2:3], pi.globals[2:3])
        torch.testing.assert_close(m.rank_texts(qi, pt)[0], matrix[2, :])


def test_padding_never_changes_a_score() -> None:
    m = _trained_like(1)
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        base = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w, mask, t))
        garbage = torch.randn(4, 3, 16)  # extra padded positions with junk values
        w2 = torch.cat([w, garbage], dim=1)
        mask2 = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
        w2[:, :7][~mask] = 5.0  # junk inside the padding too
        padded = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w2, mask2, t))
    torch.testing.assert_close(base, padded)


def test_empty_caption_scores_finite() -> None:
    m = _trained_like()
    p, v, w, mask, t = _inputs()
    mask[0] = False
    with torch.no_grad():
        s = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w * mask[..., None], mask, t))
    assert torch.isfinite(s).all()


def test_selection_is_hard_at_inference_and_differentiable_in_training() -> None:
    m = _trained_like()
    p, v, *_ = _inputs()
    with torch.no_grad():
        sel = m.select(p, v)
    assert sel.shape == (4, 5, 16)
    for b in range(4):  # every selected patch is one of the inputs, in spatial order
        matches = (sel[b][:, None, :] == p[b][None, :, :]).all(-1)
        idx = matches.float().argmax(1)
        assert bool(matches.any(1).all()) and bool((idx[1:] > idx[:-1]).all())
    m.train()
    p_req = p.clone().requires_grad_(True)
    soft = m.select(p_req, v)
    assert not torch.equal(soft, sel)  # averaged perturbed indicators, not a hard pick
    soft.pow(2).sum().backward()
    assert m.sel_patch.weight.grad is not None and m.sel_patch.weight.grad.abs().sum() > 0
    assert m.sel_out.weight.grad.abs().sum() > 0


def test_whole_matcher_gets_gradients_from_the_loss() -> None:
    m = _trained_like().train()
    p, v, w, mask, t = _inputs()
    loss = triplet_loss(m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w, mask, t)), hardest=False)
    loss.backward()
    for name in ("sel_patch.weight", "lin1.weight", "lin2.weight", "lin3.weight", "lda.head.weight",
                 "patch_adapter.down.weight", "word_adapter.down.weight", "fusion_mix"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_lda_weights_sum_to_one_and_follow_length() -> None:
    torch.manual_seed(0)
    lda = LDA(16, 8, 10)
    words = F.normalize(torch.randn(1, 10, 16), dim=-1).expand(10, -1, -1)
    mask = torch.arange(10)[None, :] < torch.arange(1, 11)[:, None]  # lengths 1..10, same words
    w = lda(words, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(10))
    assert (w[:, 0].max() - w[:, 0].min()) > 1e-4


def test_adapters_start_as_identity() -> None:
    m = Matcher(CFG).eval()
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        pt = m.prepare_texts(w, mask, t)
    torch.testing.assert_close(pt.words[:, :7], w)


def test_triplet_loss() -> None:
    good = torch.tensor([[1.0, 0.6, 0.5], [0.1, 0.9, 0.3], [0.2, 0.4, 0.8]])
    assert triplet_loss(good, 0.2).item() == 0.0
    assert triplet_loss(good, 0.2, hardest=False).item() == 0.0
    bad = good.clone()
    bad[0, 1] = 0.95  # text 1 beats image 0's positive; image 0 beats image 1 for text 1
    expected_hard = (0.2 + 0.95 - 1.0) + (0.2 + 0.95 - 0.9)
    torch.testing.assert_close(triplet_loss(bad, 0.2), torch.tensor(expected_hard))
    all_viol = triplet_loss(bad, 0.2, hardest=False)
    assert all_viol.item() >= expected_hard - 1e-6


def test_fixed_fusion_is_not_trained() -> None:
    m = Matcher(MatcherConfig(**{**CFG.to_dict(), "fusion": "fixed"}))
    assert not m.fusion_mix.requires_grad
    torch.testing.assert_close(torch.sigmoid(m.fusion_mix), torch.tensor(0.25))
