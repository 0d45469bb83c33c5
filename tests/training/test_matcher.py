from __future__ import annotations

import dataclasses
import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.losses import list_triplet_loss, listwise_loss, triplet_loss
from training.model.backbone import Backbone
from training.model.bundle import load_bundle, save_bundle
from training.model.matcher import LDA, Matcher, MatcherConfig, PreparedImages, PreparedTexts

CFG = MatcherConfig(dim=16, num_patches=12, max_words=10, top_k=5, selector_hidden=8, adapter_hidden=8,
                    lda_hidden=24, num_samples=50, word_context=False, patch_position=False, patch_context=False,
                    patch_adapter=True)
# every option the matcher has, each changed alone from CFG
OPTIONS = {
    "selector": CFG,
    "all_patches": replace(CFG, top_k=0),
    "no_adapters": replace(CFG, adapters=False),
    "slot_linear": replace(CFG, slot_linear=True),
    "fixed_temperature": replace(CFG, temperature=1.0, learn_temperature=False),
    "sum_aggregation": replace(CFG, aggregation="sum"),
    "fixed_fusion": replace(CFG, fusion="fixed"),
    "word_context": replace(CFG, word_context=True),
    "patch_position": replace(CFG, patch_position=True),
    "patch_context": replace(CFG, patch_context=True),
    "softmin": replace(CFG, softmin=True),
    "uarda": replace(CFG, relevance="uarda"),
    "views": replace(CFG, views=3),
    "camp": replace(CFG, interaction="camp"),
    "words_only_adapter": replace(CFG, patch_adapter=False, patch_position=True),
    "all_context": replace(CFG, top_k=0, word_context=True, patch_position=True, patch_context=True),
}


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


def _trained_like(cfg: MatcherConfig = CFG, seed: int = 0) -> Matcher:
    """Random non-zero weights everywhere (adapters too), so no branch is trivially identity."""
    torch.manual_seed(seed)
    m = Matcher(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def _softmax_then(x: torch.Tensor, t_in: torch.Tensor, t_out: torch.Tensor) -> torch.Tensor:
    """softmax(τ_out · n · softmax(τ_in · x)) over a 1-D vector of n valid entries (module docstring)."""
    return torch.softmax(t_out * len(x) * torch.softmax(t_in * x, 0), 0)


def reference_score(m: Matcher, pi: PreparedImages, pt: PreparedTexts, i: int, j: int, direction: str
                    ) -> torch.Tensor:
    """Per-pair loops over patches and words, straight from the equations (eqs. 7–9, LDA, fusion)."""
    n = int(pt.mask[j].sum())
    words = pt.words[j, :n]
    patches = pi.patches[i]
    c_mat = patches @ words.T  # K × n
    t = m.log_temp.exp()
    s_p = torch.stack([(_softmax_then(c_mat[r], t[0], t[1]) * c_mat[r]).sum() for r in range(c_mat.shape[0])])
    s_w2p = (_softmax_then(s_p, t[2], t[3]) * s_p).sum()
    s_w = torch.stack([(_softmax_then(c_mat[:, col], t[4], t[5]) * c_mat[:, col]).sum() for col in range(n)])
    w_sum, w_mean = pt.lda[j]
    importance = torch.softmax(m.importance(words).squeeze(-1), 0)
    s_p2w = w_sum * (importance * s_w).sum() + w_mean * s_w.mean()
    s_patch = (s_w2p + s_p2w) / 2
    s_global = pi.globals[i] @ pt.globals[j]
    share = m.share[0 if direction == "t2i" else 1]
    return (1 - share) * s_global + share * s_patch


def test_batched_scorer_equals_per_pair_reference() -> None:
    m = _trained_like(replace(CFG, top_k=0))
    m.set_shares(0.3, 0.6)
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        pi, pt = m.prepare_images(p, v), m.prepare_texts(w, mask, t)
        for direction in ("t2i", "i2t"):
            matrix = m.score_matrix(pi, pt, direction)
            for i, j in itertools.product(range(4), range(4)):
                torch.testing.assert_close(matrix[i, j], reference_score(m, pi, pt, i, j, direction),
                                           atol=1e-5, rtol=1e-4)
            pairs, _ = m.score_pairs(pi, pt, direction=direction)
            torch.testing.assert_close(pairs, matrix.diag())
        # one query against k candidates, both directions, with each direction's share
        t2i, i2t = m.score_matrix(pi, pt, "t2i"), m.score_matrix(pi, pt, "i2t")
        torch.testing.assert_close(m.rerank(pt.take(torch.tensor([1])), pi)[0], t2i[:, 1])
        torch.testing.assert_close(m.rerank(pi.take(torch.tensor([2])), pt)[0], i2t[2, :])
        # two queries' candidates in one call, each candidate scored against its own query
        owner, cand = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 3, 1, 2, 3])
        queries = torch.tensor([1, 3])
        torch.testing.assert_close(m.rerank(pt.take(queries), pi.take(cand), owner)[0], t2i[cand, queries[owner]])
        torch.testing.assert_close(m.rerank(pi.take(queries), pt.take(cand), owner)[0], i2t[queries[owner], cand])
        # one query expanded to aligned rows scores as the broadcast does
        torch.testing.assert_close(m.score_pairs(pi, pt.take(torch.tensor([1])).expand(4), direction="t2i")[0],
                                   t2i[:, 1])


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_padding_and_masking_never_change_a_score(option: str) -> None:
    m = _trained_like(OPTIONS[option], 1)
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        base = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w, mask, t))
        garbage = torch.randn(4, 3, 16)  # extra padded positions with junk values
        w2 = torch.cat([w, garbage], dim=1)
        mask2 = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
        w2[:, :7][~mask] = 5.0  # junk inside the padding too
        padded = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w2, mask2, t))
        # a caption scored alone, without padding at all, gets the same score as in the padded batch
        alone = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w[1:2, :3], mask[1:2, :3], t[1:2]))
        trimmed = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w2, mask2, t).trimmed())
    torch.testing.assert_close(base, padded)
    torch.testing.assert_close(base, trimmed)
    torch.testing.assert_close(alone[:, 0], base[:, 1])


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_empty_caption_scores_finite(option: str) -> None:
    m = _trained_like(OPTIONS[option])
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


def test_selector_noise_follows_the_score_spread() -> None:
    """Scaling the selector's scores scales its noise too: training picks what inference picks."""
    m = _trained_like()
    p, v, *_ = _inputs()
    with torch.no_grad():
        m.sel_out.weight.mul_(1000.0)  # a wide score spread: the perturbed pick must equal the hard pick
        m.sel_out.bias.zero_()
        hard = m.select(p, v)
        m.train()
        soft = m.select(p, v)
    torch.testing.assert_close(soft, hard, atol=0.2, rtol=0)


def test_selector_loss_teaches_the_selector_the_patches_words_attend_to() -> None:
    """Images whose captions name their 'object' patches (one feature direction, the rest another): trained on
    the selector loss alone, the selector's top-K holds those patches, where a random top-K would hold
    K/M of them; the target sends no gradient into the interaction."""
    torch.manual_seed(0)
    m = Matcher(replace(CFG, patch_adapter=False))
    n, k_obj = 64, 3
    base, obj_dir = F.normalize(torch.randn(2, CFG.dim), dim=-1)
    patches = F.normalize(base + 0.5 * torch.randn(n, CFG.num_patches, CFG.dim), dim=-1)
    where = torch.rand(n, CFG.num_patches).argsort(1)[:, :k_obj]  # each image's object patches
    rows = torch.arange(n)[:, None]
    patches[rows, where] = F.normalize(obj_dir + 0.5 * torch.randn(n, k_obj, CFG.dim), dim=-1)
    words, mask = patches[rows, where], torch.ones(n, k_obj, dtype=torch.bool)  # each word is one object patch
    glob = F.normalize(patches.mean(1), dim=-1)
    sel = [m.sel_patch.weight, m.sel_patch.bias, m.sel_global.weight, m.sel_out.weight, m.sel_out.bias]
    opt = torch.optim.Adam(sel, lr=1e-2)

    def kept_share() -> float:
        with torch.no_grad():
            top = m.selector_scores(patches, glob).topk(CFG.top_k, dim=1).indices
        return float((top[:, :, None] == where[:, None, :]).any(1).float().mean())

    before = kept_share()
    for _ in range(150):
        opt.zero_grad()
        loss = m.selector_loss(patches, glob, words, mask)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert m.log_temp.grad is None  # the target is the interaction's attention, held fixed
    assert kept_share() > 0.95 > CFG.top_k / CFG.num_patches + 0.2 and kept_share() > before


def test_all_patches_skips_the_selector() -> None:
    m = _trained_like(replace(CFG, top_k=0))
    p, v, *_ = _inputs()
    assert not hasattr(m, "sel_patch")
    assert torch.equal(m.select(p, v), p)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_whole_matcher_gets_gradients_from_the_loss(option: str) -> None:
    cfg = OPTIONS[option]
    m = _trained_like(cfg).train()
    p, v, w, mask, t = _inputs()
    g, s = m.score_matrices(m.prepare_images(p, v), m.prepare_texts(w, mask, t))
    loss = triplet_loss(m.mix(g, s), hardest=False) + triplet_loss(s, hardest=False)
    loss.backward()
    camp = cfg.interaction == "camp"  # replaces eqs. 7–10: LDA, importances and their temperatures are unused
    names = [] if camp else ["lda.head.weight", "lda.up.weight"]
    names += ["importance.weight"] if cfg.aggregation == "weighted" and not camp else []
    names += [f"camp.{n}" for n in ("log_temp", "gate_scale", "gate_centre", "word_query", "patch_query",
                                    "head.0.weight", "head.2.weight", "scale")] if camp else []  # not offset: a shift
    names += ["sel_patch.weight"] if cfg.top_k else []
    names += ["word_adapter.down.weight"] if cfg.adapters else []
    names += ["patch_adapter.down.weight"] if cfg.adapters and cfg.patch_adapter else []
    names += ["lin1.weight", "lin2.weight", "lin3.weight"] if cfg.slot_linear else []
    names += ["log_temp"] if cfg.learn_temperature and not camp else []
    names += ["word_refiner.attn.in_proj_weight", "word_refiner.mlp.0.weight"] if cfg.word_context else []
    names += ["patch_refiner.attn.in_proj_weight", "patch_refiner.mlp.0.weight"] if cfg.patch_context else []
    names += ["patch_pos"] if cfg.patch_position else []
    names += ["log_min_temp"] if cfg.softmin else []
    names += ["relevance_boundary"] if cfg.relevance == "uarda" else []
    names += ["view_attn.weight", "region_mix"] if cfg.views else []
    names += ["fusion_mix"] if cfg.fusion == "learned" else []
    params = dict(m.named_parameters())
    for name in names:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    if not cfg.learn_temperature:
        assert not params["log_temp"].requires_grad


def test_lda_projects_up_and_its_weights_follow_length() -> None:
    torch.manual_seed(0)
    lda = LDA(16, 24, 10)
    assert lda.up.out_features >= 16 + 1  # project up, as the LDA paper describes
    words = F.normalize(torch.randn(1, 10, 16), dim=-1).expand(10, -1, -1)
    mask = torch.arange(10)[None, :] < torch.arange(1, 11)[:, None]  # lengths 1..10, same words
    w = lda(words, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(10))
    assert (w[:, 0].max() - w[:, 0].min()) > 1e-4


def test_patch_score_does_not_grow_with_caption_length() -> None:
    """The same word repeated 2 or 9 times scores the same: both aggregations are length-normalised."""
    m = _trained_like(replace(CFG, top_k=0))
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        lda = torch.tensor([[0.7, 0.3]])
        sims = []
        for n in (2, 9):
            words = w[0:1, :1].expand(1, n, -1)
            pt = PreparedTexts(words, torch.ones(1, n, dtype=torch.bool), t[:1], lda, torch.full((1, n), 1 / n))
            sims.append(m.score_pairs(m.prepare_images(p[:1], v[:1]), pt)[1])
        summed = replace(m.config, aggregation="sum")
        m_sum = Matcher(summed).eval()
        m_sum.load_state_dict(m.state_dict(), strict=False)
        grows = [m_sum.score_pairs(m_sum.prepare_images(p[:1], v[:1]),
                                   PreparedTexts(w[0:1, :1].expand(1, n, -1), torch.ones(1, n, dtype=torch.bool),
                                                 t[:1], torch.tensor([[0.7, 0.3]]), torch.full((1, n), 1 / n)))[1]
                 for n in (2, 9)]
    torch.testing.assert_close(sims[0], sims[1])
    assert abs(float(grows[1] - grows[0])) > 1e-3  # the old plain sum does grow


def test_adapters_start_as_identity_and_attention_starts_peaked() -> None:
    m = Matcher(replace(CFG, top_k=0)).eval()
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        pt = m.prepare_texts(w, mask, t)
        torch.testing.assert_close(pt.words[:, :7], w)
        # at initialisation each word's score is close to its best patch's similarity (max), not the mean
        sim = torch.einsum("kd,ld->kl", p[0], pt.words[0])
        inter = m.interact(sim.T[None], pt.mask[:1], pt.lda[:1], pt.importance[:1])
    best, mean = sim.max(0).values[:7], sim.mean(0)[:7]
    got = inter.word_scores[0, :7]
    assert bool(((got - best).abs() < (got - mean).abs()).all())
    assert float(inter.word_attention[0, :7].max(-1).values.min()) > 0.5


def test_temperatures_are_order_free_over_patches() -> None:
    """Permuting the kept patches permutes nothing in the score: no weight belongs to a slot."""
    m = _trained_like(replace(CFG, top_k=0))
    p, v, w, mask, t = _inputs()
    perm = torch.randperm(12)
    with torch.no_grad():
        a = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w, mask, t))
        b = m.score_matrix(m.prepare_images(p[:, perm], v), m.prepare_texts(w, mask, t))
    torch.testing.assert_close(a, b)


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
    # an equivalent caption is never a negative: marking (0, 1) true removes both violations
    positives = torch.zeros(3, 3, dtype=torch.bool)
    positives[0, 1] = True
    assert triplet_loss(bad, 0.2, positives=positives).item() == 0.0


def test_list_losses() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.85], [0.2, 0.8, 0.1]])
    positive = torch.tensor([[True, False, False], [False, False, True]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    # query 0: positive 0.9 vs hardest negative 0.85 → 0.15 margin violation; query 1: 0.1 vs 0.8 → 0.9
    torch.testing.assert_close(list_triplet_loss(scores, positive, valid, 0.2), torch.tensor(0.15 + 0.9))
    expected = -(torch.log_softmax(10 * scores[0], 0)[0] + torch.log_softmax(10 * scores[1], 0)[2]) / 2
    torch.testing.assert_close(listwise_loss(scores, positive, valid, 10.0), expected)
    # two positives: the probability mass of both counts
    both = positive.clone()
    both[0, 2] = True
    assert listwise_loss(scores, both, valid, 10.0) < listwise_loss(scores, positive, valid, 10.0)


def test_fixed_fusion_is_not_trained() -> None:
    m = Matcher(replace(CFG, fusion="fixed"))
    assert not m.fusion_mix.requires_grad
    torch.testing.assert_close(torch.sigmoid(m.fusion_mix), torch.tensor(0.25))


def test_config_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="aggregation"):
        replace(CFG, aggregation="max")
    with pytest.raises(ValueError, match="top_k"):
        replace(CFG, top_k=13)
    with pytest.raises(ValueError, match="relevance"):
        replace(CFG, relevance="relu")
    with pytest.raises(ValueError, match="views"):
        replace(CFG, views=-1)
    with pytest.raises(ValueError, match="slot_linear"):
        replace(CFG, relevance="uarda", slot_linear=True)
    with pytest.raises(ValueError, match="interaction"):
        replace(CFG, interaction="scan")
    with pytest.raises(ValueError, match="camp"):
        replace(CFG, interaction="camp", views=2)
    with pytest.raises(ValueError, match="unknown matcher options"):
        MatcherConfig.from_dict({**CFG.to_dict(), "fusion_global": 0.6})


def test_context_options_start_as_identity() -> None:
    """Zero-initialised: a fresh matcher with word context, patch positions and patch context prepares exactly
    the tokens a plain one does, so training starts from the backbone's own space."""
    plain = Matcher(replace(CFG, top_k=0)).eval()
    ctx = Matcher(OPTIONS["all_context"]).eval()
    ctx.load_state_dict(plain.state_dict(), strict=False)
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(ctx.prepare_images(p, v).patches, plain.prepare_images(p, v).patches)
        torch.testing.assert_close(ctx.prepare_texts(w, mask, t).words, plain.prepare_texts(w, mask, t).words)


def test_word_context_lets_a_word_read_the_words_after_it() -> None:
    """Causal tokens never see what follows; with word context, changing the last word changes the first."""
    m = _trained_like(OPTIONS["word_context"])
    p, v, w, mask, t = _inputs()
    w2 = w.clone()
    w2[0, 6] = F.normalize(torch.randn(16), dim=0)
    with torch.no_grad():
        a, b = m.prepare_texts(w, mask, t).words, m.prepare_texts(w2, mask, t).words
    assert float((a[0, 0] - b[0, 0]).abs().max()) > 1e-3
    torch.testing.assert_close(a[1:], b[1:])  # other captions untouched


def test_patch_positions_make_the_score_depend_on_where_a_patch_is() -> None:
    m = _trained_like(OPTIONS["patch_position"])
    p, v, w, mask, t = _inputs()
    perm = torch.randperm(12)
    with torch.no_grad():
        a = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w, mask, t))
        b = m.score_matrix(m.prepare_images(p[:, perm], v), m.prepare_texts(w, mask, t))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="patches per image"):
        m.prepare_images(p[:, :5], v)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_bundles_round_trip_every_option(option: str, tiny_backbone: Backbone, tmp_path: Path) -> None:
    b = tiny_backbone
    grid = b.model.visual.grid_size
    cfg = replace(OPTIONS[option], dim=b.embed_dim, num_patches=grid[0] * grid[1], max_words=b.context_length - 2,
                  top_k=min(OPTIONS[option].top_k, 8))
    m = _trained_like(cfg)
    m.set_shares(0.3, 0.7)
    save_bundle(tmp_path / "bundle", b, m, include_backbone=True)
    loaded = load_bundle(tmp_path / "bundle", device="cpu").matcher
    assert loaded.config == cfg
    g = torch.Generator().manual_seed(4)
    p = F.normalize(torch.randn(3, cfg.num_patches, cfg.dim, generator=g), dim=-1)
    v = F.normalize(torch.randn(3, cfg.dim, generator=g), dim=-1)
    w = F.normalize(torch.randn(3, 9, cfg.dim, generator=g), dim=-1)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 2])[:, None]
    with torch.no_grad():
        for d in ("t2i", "i2t"):
            want = m.score_matrix(m.prepare_images(p, v), m.prepare_texts(w, mask, v), d)
            got = loaded.score_matrix(loaded.prepare_images(p, v), loaded.prepare_texts(w, mask, v), d)
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_an_older_config_without_the_new_options_loads_as_trained() -> None:
    added = ("word_context", "patch_position", "patch_context", "softmin", "patch_adapter")
    cfg = MatcherConfig.from_dict({k: v for k, v in CFG.to_dict().items() if k not in added})
    assert not any(getattr(cfg, k) for k in added[:-1]) and cfg.patch_adapter
    new = MatcherConfig()  # what a new training uses
    assert new.word_context and new.patch_position and new.patch_context and not new.patch_adapter


@pytest.mark.parametrize("option", ["selector", "views"])
def test_prepared_batches_concatenate_to_the_whole_set(option: str) -> None:
    m = _trained_like(OPTIONS[option])
    p, v, w, mask, t = _inputs()
    with torch.no_grad():
        whole_i, whole_t = m.prepare_images(p, v), m.prepare_texts(w, mask, t)
        parts_i = [m.prepare_images(p[s], v[s]) for s in (slice(0, 1), slice(1, 4))]
        parts_t = [m.prepare_texts(w[s], mask[s], t[s]) for s in (slice(0, 1), slice(1, 4))]
    for whole, joined in ((whole_i, PreparedImages.cat(parts_i)), (whole_t, PreparedTexts.cat(parts_t))):
        for f in dataclasses.fields(whole):
            a, b = getattr(whole, f.name), getattr(joined, f.name)
            assert (a is None) == (b is None), f.name
            if a is not None:
                torch.testing.assert_close(a, b, msg=f.name)
    assert (whole_i.views is not None) == (option == "views")
    idx = torch.tensor([2, 0])  # take() keeps the same rows of every field
    torch.testing.assert_close(whole_t.take(idx).words, whole_t.words[idx])
