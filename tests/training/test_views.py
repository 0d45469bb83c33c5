"""MGAN's region level (matcher option `views`): a caption matches the image's best-fitting view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.model.matcher import Matcher, MatcherConfig, PreparedImages

NAMES = ("red", "blue", "circle", "square", "background")


def vec(*names: str) -> torch.Tensor:
    v = torch.zeros(8)
    for n in names:
        v[NAMES.index(n)] = 1.0
    return F.normalize(v, dim=0)


def _matcher() -> Matcher:
    return Matcher(MatcherConfig(dim=8, num_patches=4, max_words=4, word_context=False, patch_position=False,
                                 adapters=False, views=2)).eval()


def test_a_one_object_caption_matches_the_view_of_its_object() -> None:
    """"red circle" against an image of a red circle and a blue square, and against its colour-swapped twin (a
    blue circle and a red square). Pooled over the whole image the two tie (the same four attributes); each
    view holds one object, and the caption's best view is the red circle in the first image only."""
    true = torch.stack([vec("red", "circle"), vec("blue", "square")])
    twin = torch.stack([vec("blue", "circle"), vec("red", "square")])
    words = torch.stack([vec("red"), vec("circle")])
    caption = Matcher.text_vectors(words[None], torch.ones(1, 2, dtype=torch.bool))
    pooled = [float(F.normalize(v.mean(0), dim=0) @ caption[0]) for v in (true, twin)]
    assert abs(pooled[0] - pooled[1]) < 1e-6
    m = _matcher()
    region = m.region_scores(torch.stack([true, twin]), caption.expand(2, -1))
    torch.testing.assert_close(region[0], torch.tensor(1.0))
    assert region[0] > region[1] + 0.4
    # with the views given, score_pairs adds ρ·S_region to the word–patch score
    patches = torch.stack([torch.cat([true, torch.stack([vec("background")] * 2)])] * 2)
    img = PreparedImages(patches, torch.zeros(2, 8), torch.stack([true, twin]))
    txt = m.texts_from_words(words[None].expand(2, -1, -1), torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 8))
    with torch.no_grad():
        m.region_mix.fill_(0.5)
        _, fine = m.score_pairs(img, txt)
        without = m.interact(torch.einsum("nkd,nld->nlk", patches, txt.words), txt.mask, txt.lda,
                             txt.importance).patch
    torch.testing.assert_close(fine, without + 0.5 * region)


def test_views_pool_the_prepared_patches_and_are_computed_when_not_given() -> None:
    m = _matcher()
    g = torch.Generator().manual_seed(0)
    patches = F.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    views, att = m.image_views(patches)
    assert views.shape == (3, 2, 8) and att.shape == (3, 2, 4)
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 2))
    torch.testing.assert_close(views.norm(dim=-1), torch.ones(3, 2))
    prepared = m.prepare_images(patches, torch.zeros(3, 8))
    torch.testing.assert_close(prepared.views, views)
    # the service keeps only the prepared patches: the same scores with the views recomputed
    words = F.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    txt = m.prepare_texts(words, torch.ones(3, 4, dtype=torch.bool), torch.zeros(3, 8))
    with torch.no_grad():
        a = m.score_pairs(prepared, txt)[1]
        b = m.score_pairs(PreparedImages(prepared.patches, prepared.globals), txt)[1]
        one = m.score_pairs(PreparedImages(prepared.patches[:1], prepared.globals[:1]), txt)[1]  # 1 × N
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(one[0], a[0])
