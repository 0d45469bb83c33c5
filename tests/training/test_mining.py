"""Which mined candidates are positives, negatives, or left out: the labels the matcher trains on."""

from __future__ import annotations

import torch

from training.mining import Candidates, Truth, mine

CAPTIONS = [  # (image, caption)
    (0, "A red circle left of a blue square."),
    (0, "a blue square right of a red circle"),
    (1, "a red circle"),
    (2, "red circle left of blue square"),  # equivalent to image 0's first caption
    (3, "a red square left of a blue circle"),
    (4, "a big red circle left of a blue square left of a green triangle"),
    (5, "a large red circle left of a small blue square"),
    (6, "a man not wearing a hat, no dog"),
    (7, "a man wearing a hat"),
    (7, "a dog"),
]


def _truth() -> Truth:
    return Truth(torch.tensor([i for i, _ in CAPTIONS]), [c for _, c in CAPTIONS])


def test_equivalent_captions_are_matches() -> None:
    t = _truth()
    m = t.matches(torch.arange(8)[:, None], torch.arange(len(CAPTIONS))[None, :])
    assert m[0, 3] and m[2, 0]  # same words up to case, articles and punctuation
    assert not m[1, 0] and not m[3, 0] and not m[0, 2]


def test_a_run_of_words_of_an_own_caption_is_implied_and_a_rebinding_is_not() -> None:
    t = _truth()
    imp = t.implied(torch.arange(8)[:, None], torch.arange(len(CAPTIONS))[None, :])
    assert imp[0, 2] and imp[2, 2] and imp[4, 2]  # "red circle" is said of images 0, 2 and 4
    assert imp[0, 0] and imp[2, 0]  # an equivalent caption is trivially a run
    assert imp[4, 0]  # "red circle left of blue square" inside "big red circle left of blue square left of ..."
    assert not imp[3, 2]  # image 3 has a red square and a blue circle: "red circle" is not a run of its caption
    assert not imp[0, 4] and not imp[3, 0]  # the colours bound to other shapes
    assert not imp[1, 0]  # a longer caption is never implied by a shorter one
    assert imp[5, 0] and imp[5, 2]  # modifiers dropped: "(large) red circle left of (small) blue square"
    assert not imp[5, 4]
    assert not imp[6, 8] and not imp[6, 9]  # a negation is never dropped, nor a negated phrase read out
    assert imp[7, 8] and imp[7, 9] and not imp[7, 7]


def test_mine_labels_candidates_and_leaves_implied_ones_out() -> None:
    t = _truth()
    n_img, n_txt = 8, len(CAPTIONS)
    torch.manual_seed(0)
    img, txt = torch.randn(n_img, 8), torch.randn(n_txt, 8)
    t2i, i2t = mine(img, txt, t, k=8, implied=True)  # every image is a candidate of every caption
    assert t2i.index.shape == (n_txt, 8) and i2t.index.shape == (n_img, 8)
    for q in range(n_txt):
        for slot, j in enumerate(t2i.index[q].tolist()):
            assert bool(t2i.positive[q, slot]) == bool(t.matches(torch.tensor(j), torch.tensor(q)))
            assert bool(t2i.unsure[q, slot]) == (bool(t.implied(torch.tensor(j), torch.tensor(q)))
                                                 and not bool(t2i.positive[q, slot]))
    row = t2i.index[2].tolist()  # "a red circle": its own image is the positive, images 0, 2, 4, 5 are unsure
    assert {row[s] for s in range(8) if t2i.positive[2, s]} == {1}
    assert {row[s] for s in range(8) if t2i.unsure[2, s]} == {0, 2, 4, 5}
    assert not (t2i.positive & t2i.unsure).any() and not (i2t.positive & i2t.unsure).any()


def test_a_draw_keeps_the_hardest_half_samples_the_rest_and_always_holds_a_positive() -> None:
    depth, size = 10, 4
    index = torch.arange(depth).repeat(3, 1) + 100 * torch.arange(3)[:, None]  # [3, depth]
    positive = torch.zeros(3, depth, dtype=torch.bool)
    positive[0, 0] = True  # in the head: always drawn
    positive[1, 9] = True  # deep in the list: drawn by chance, else put in the last slot
    positive[2, [5, 6, 7, 8, 9]] = True
    unsure = torch.zeros_like(positive)
    unsure[2, 1] = True
    pool = Candidates(index, positive, unsure)
    seen: set[int] = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        d = pool.draw(torch.tensor([2, 0, 1]), size, g)  # rows in the queries' order
        assert d.index.shape == (3, size)
        assert d.index[:, :2].tolist() == [[200, 201], [0, 1], [100, 101]]  # the global ranking's hardest half
        assert d.positive.any(dim=1).all()  # every list can be learned from
        assert d.positive[2, -1] or 109 in d.index[2].tolist()
        assert torch.equal(d.positive, (d.index % 100 == 0) & (d.index < 100) | (d.index == 109) |
                           ((d.index >= 205) & (d.index <= 209)))  # labels travel with their candidates
        assert torch.equal(d.unsure, d.index == 201)
        assert len(set(d.index[1].tolist())) == size  # no candidate twice
        seen |= set(d.index[1].tolist())
    assert seen == set(range(depth))  # over the steps the whole list is seen
    assert pool.draw(torch.tensor([1]), depth).index.tolist() == [index[1].tolist()]  # no pool: the list as mined


def test_the_pool_is_as_deep_as_the_service_reranks_unless_told() -> None:
    from training.matcher_train import pool_depth
    from training.train_config import TrainConfig

    cfg = TrainConfig()
    assert (cfg.candidates, cfg.calibrate_candidates) == (16, 100)
    assert pool_depth(cfg) == 100
    assert pool_depth(TrainConfig(candidate_pool=0)) == 16  # 0: the top `candidates` only
    assert pool_depth(TrainConfig(candidate_pool=50)) == 50
    assert pool_depth(TrainConfig(calibrate_candidates=8)) == 16  # never shallower than a step
