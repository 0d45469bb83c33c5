"""Hand-made binding and relation cases in a small token world, where mean pooling cannot tell the images apart.

Tokens are sums of orthogonal attribute directions: a patch of a red circle on the left is
red + circle + left. Swapping colours (binding) or positions (relation) between two objects
leaves the sum of an image's patches unchanged, so any mean-pooled score — and a global vector
that pools patches — ties. The matcher, trained on this world with the product's own training
loop (mined candidates, listwise + hardest-negative losses), must rank the true image first.
"""

from __future__ import annotations

import random
import types

import pytest
import torch
import torch.nn.functional as F

from training.calibrate import tune
from training.evaluate import evaluate
from training.features import Features
from training.matcher_train import Frozen, train_matcher
from training.model.matcher import Matcher, MatcherConfig
from training.run_state import seed_everything

COLOURS, SHAPES, PLACES = ("red", "blue", "green"), ("circle", "square", "triangle"), ("left", "right")
NAMES = [*COLOURS, *SHAPES, *PLACES, "background", "filler"]
DIM, PATCHES, WORDS = 16, 6, 6


def vec(*names: str) -> torch.Tensor:
    v = torch.zeros(DIM)
    for n in names:
        v[NAMES.index(n)] = 1.0
    return F.normalize(v, dim=0)


def image_tokens(objects: list[tuple[str, str, str]]) -> torch.Tensor:
    """Each object (colour, shape, place) covers two patches; the rest is background."""
    toks = [vec(c, s, p) for c, s, p in objects for _ in range(2)]
    toks += [vec("background")] * (PATCHES - len(toks))
    return torch.stack(toks)


def caption_tokens(objects: list[tuple[str, str, str]]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Causal word tokens of "a C1 S1 left of a C2 S2": the first object's words cannot know its place,
    the second object's noun has read the relation."""
    (c1, s1, _), (c2, s2, p2) = objects
    words = [vec("filler"), vec(c1, s1), vec("filler"), vec(c2, s2, p2)]
    mask = torch.zeros(WORDS, dtype=torch.bool)
    mask[: len(words)] = True
    toks = torch.zeros(WORDS, DIM)
    toks[: len(words)] = torch.stack(words)
    return toks, mask, f"a {c1} {s1} {'left' if p2 == 'right' else 'right'} of a {c2} {s2}"


def world(n: int, seed: int) -> Features:
    """n scenes of two objects, each followed by its colour-swap or position-swap twin."""
    rng = random.Random(seed)
    scenes = []
    while len(scenes) < n:
        cs, ss = rng.sample(COLOURS, 2), rng.sample(SHAPES, 2)
        objs = [(cs[0], ss[0], "left"), (cs[1], ss[1], "right")]
        scenes.append(objs)
        if rng.random() < 0.5:
            scenes.append([(objs[1][0], objs[0][1], "left"), (objs[0][0], objs[1][1], "right")])  # colours swapped
        else:
            scenes.append([(objs[1][0], objs[1][1], "left"), (objs[0][0], objs[0][1], "right")])  # places swapped
    scenes = scenes[:n]
    g = torch.Generator().manual_seed(seed)
    caps = [caption_tokens(s) for s in scenes] + [caption_tokens(s[::-1]) for s in scenes]
    txt_mask = torch.stack([c[1] for c in caps])
    # a little noise on every token, as real encoders give: no two items tie exactly
    img_tok = F.normalize(torch.stack([image_tokens(s) for s in scenes]) + 0.05 * torch.randn(n, PATCHES, DIM,
                                                                                               generator=g), dim=-1)
    txt_tok = F.normalize(torch.stack([c[0] for c in caps]) + 0.05 * torch.randn(len(caps), WORDS, DIM, generator=g),
                          dim=-1) * txt_mask[..., None]
    txt_img = torch.cat([torch.arange(n), torch.arange(n)])
    # bag-of-words globals: the mean of the tokens, as a pooled vector that ignores binding and order
    img_glob = F.normalize(img_tok.mean(1), dim=-1)
    txt_glob = F.normalize((txt_tok * txt_mask[..., None]).sum(1), dim=-1)
    return Features([str(i) for i in range(n)], img_glob, img_tok.half(), txt_img, txt_glob, txt_tok.half(), txt_mask,
                    [c[2] for c in caps])


def mean_pooling(img: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> float:
    return float((img @ words[mask].T).mean())


@pytest.fixture(scope="module", params=[{}, {"relevance": "uarda"}, {"views": 4}], ids=["default", "uarda", "views"])
def trained(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Matcher:
    """The default matcher, with UARDA's relevance threshold (its boundary and loss trained too) and with MGAN's
    region level (views and their diversity term trained too). Every generator is seeded (training draws
    captions with numpy's), so the outcome does not depend on which tests ran before."""
    seed_everything(0)
    tmp_path = tmp_path_factory.mktemp("cases")
    cfg = types.SimpleNamespace(steps=150, minutes=None, queries=16, candidates=8, lr=3e-3, weight_decay=1e-4,
                                schedule="cosine", grad_clip=2.0, margin=0.2, listwise=1.0, triplet=1.0,
                                patch_loss=1.0, listwise_scale=20.0, val_every=50, val_candidates=8,
                                backbone_lr_scale=0.1, skip_implied=True, candidate_pool=None, patch_bce=1.0,
                                calibrate_candidates=32,
                                relevance_loss=1.0, relevance_margin=0.1, view_diversity=0.1)
    # the patch adapter on: this world's patch and word tokens are built from different parts, so the image
    # side needs a map of its own (the default leaves it off for speed; real tokens share one space)
    m = Matcher(MatcherConfig(dim=DIM, num_patches=PATCHES, max_words=WORDS, adapter_hidden=32, lda_hidden=32,
                              patch_adapter=True, **request.param))
    dev = torch.device("cpu")
    train_matcher(m, Frozen(world(200, 1), dev), Frozen(world(60, 2), dev), cfg, tmp_path / "m.ckpt", False, dev,
                  progress=False, log=lambda *_: None)
    return m.eval()


def test_binding_and_relation_cases_need_the_matcher(trained: Matcher) -> None:
    m = trained
    cases = {  # true image, the twin that a pooled score cannot tell apart, and the caption of the true one
        "binding": ([("red", "circle", "left"), ("blue", "square", "right")],
                    [("blue", "circle", "left"), ("red", "square", "right")]),
        "relation": ([("green", "triangle", "left"), ("red", "circle", "right")],
                     [("red", "circle", "left"), ("green", "triangle", "right")]),
    }
    for name, (true, twin) in cases.items():
        words, mask, _ = caption_tokens(true)
        a, b = image_tokens(true), image_tokens(twin)
        assert abs(mean_pooling(a, words, mask) - mean_pooling(b, words, mask)) < 1e-6, name  # a tie
        with torch.no_grad():
            pi = m.prepare_images(torch.stack([a, b]), F.normalize(torch.stack([a.mean(0), b.mean(0)]), dim=-1))
            pt = m.prepare_texts(words[None].expand(2, -1, -1), mask[None].expand(2, -1), torch.zeros(2, DIM))
            _, patch = m.score_pairs(pi, pt)
        assert float(patch[0]) > float(patch[1]) + 0.05, (name, patch.tolist())


def test_trained_matcher_beats_global_on_unseen_scenes(trained: Matcher) -> None:
    tune(trained, world(60, 2), 60, "cpu")
    res = evaluate(trained, world(80, 3), candidates=60, rankers=("global", "two_stage", "exhaustive"))
    assert res["two_stage"]["rsum"] >= res["global"]["rsum"] + 30, res
    assert res["two_stage"]["i2t"]["r1"] >= res["global"]["i2t"]["r1"] + 20, res
    assert abs(res["exhaustive"]["rsum"] - res["two_stage"]["rsum"]) <= 5, res


def test_patch_bce_asks_each_pair_whether_it_matches_against_one_learned_threshold() -> None:
    from training.losses import hardest_bce_loss
    from training.matcher_train import MatchThreshold, matcher_step
    from training.mining import Truth, mine
    from training.train_config import TrainConfig

    scores = torch.tensor([[0.6, 0.5, 0.1, 0.2], [0.3, 0.7, 0.4, 9.0]], requires_grad=True)
    positive = torch.tensor([[True, True, False, False], [False, True, False, False]])
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])  # 9.0 is left out
    bce = MatchThreshold()
    got = bce.loss(scores, positive, valid, 20.0)
    start = (0.6 + 0.5 + 0.1 + 0.2 + 0.3 + 0.7 + 0.4) / 7  # the first lists' mean valid score
    assert float(bce.threshold.detach()) == pytest.approx(start) and bool(bce.started)
    want = hardest_bce_loss(20.0 * (scores.detach() - start), positive, valid)
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    got.backward()
    assert float(scores.grad[0, 1]) < 0 and float(scores.grad[0, 3]) > 0 and float(scores.grad[1, 3]) == 0
    assert float(scores.grad[0, 2]) == 0  # not the hardest negative of its list
    assert bce.threshold.grad is not None and float(bce.threshold.grad) != 0  # the threshold is learned
    with torch.no_grad():
        bce.threshold.fill_(0.25)
    bce.loss(scores.detach() + 1.0, positive, valid, 20.0)  # absolute: later lists do not move it
    assert float(bce.threshold.detach()) == 0.25

    seed_everything(0)  # in a training step: one term per direction beside the ranking terms, only when asked
    f = world(40, 3)
    m = Matcher(MatcherConfig(dim=DIM, num_patches=PATCHES, max_words=WORDS, adapter_hidden=16, lda_hidden=16))
    t2i, i2t = mine(f.img_glob, f.txt_glob, Truth(f.txt_img, f.texts), 6)
    images, captions = torch.arange(8), torch.tensor([int((f.txt_img == i).nonzero()[0]) for i in range(8)])
    source = Frozen(f, torch.device("cpu"))
    for threshold in (None, MatchThreshold()):
        out = matcher_step(m, source, images, captions, t2i.draw(captions, 6), i2t.draw(images, 6),
                           TrainConfig(patch_bce=1.0), threshold)
        assert ("bce_t2i" in out.parts and "bce_i2t" in out.parts) == (threshold is not None)
        assert "listwise_t2i_patch" in out.parts and torch.isfinite(out.total)


def test_a_selector_is_trained_towards_the_attended_patches_in_a_step() -> None:
    """With `top_k` > 0 a training step adds the selector loss (and it reaches the selector's weights); with
    all patches, or `selector_loss` 0, there is nothing to add."""
    from training.matcher_train import matcher_step
    from training.mining import Truth, mine
    from training.train_config import TrainConfig

    seed_everything(0)
    f = world(40, 3)
    t2i, i2t = mine(f.img_glob, f.txt_glob, Truth(f.txt_img, f.texts), 6)
    images, captions = torch.arange(8), torch.tensor([int((f.txt_img == i).nonzero()[0]) for i in range(8)])
    source = Frozen(f, torch.device("cpu"))
    for top_k, weight, added in ((4, 1.0, True), (4, 0.0, False), (0, 1.0, False)):
        m = Matcher(MatcherConfig(dim=DIM, num_patches=PATCHES, max_words=WORDS, adapter_hidden=16, lda_hidden=16,
                                  top_k=top_k, num_samples=20)).train()
        out = matcher_step(m, source, images, captions, t2i.draw(captions, 6), i2t.draw(images, 6),
                           TrainConfig(selector_loss=weight))
        assert ("selector" in out.parts) == added and torch.isfinite(out.total)
        if added:
            assert out.parts["selector"] >= 0  # a KL divergence
            out.total.backward()
            assert m.sel_patch.weight.grad is not None and float(m.sel_patch.weight.grad.abs().sum()) > 0
