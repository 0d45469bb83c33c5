"""Which mined candidates are positives, negatives, or left out: the labels the matcher trains on."""

from __future__ import annotations

import torch

from training.mining import Truth, mine

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
