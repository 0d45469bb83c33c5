"""`finesearch explain`: a PNG with two maps per word, and the word pieces' spans in the caption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from service.cli import main
from service.config import DEMO_MODEL
from training.datasets import read_dataset
from training.model.backbone import Backbone
from training.model.defaults import TINY_MODEL
from training.model.explain import word_pieces
from training.synth import generate


def test_explain_writes_one_map_per_word(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path / "synth", seed=3, train=0, val=0, test=4)
    item = read_dataset(tmp_path / "synth" / "dataset.json", "karpathy", "test")[0]
    text = item.captions[0]
    out, js = tmp_path / "why.png", tmp_path / "why.json"
    assert main(["explain", "--model", str(DEMO_MODEL), "--image", str(tmp_path / "synth" / "images" / item.filename),
                 "--text", text, "--out", str(out), "--json", str(js)]) == 0
    ex = json.loads(js.read_text())
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # every word in order, repeated ones ("a … a …") too
    assert summary["words"] == [[w["text"], w["contribution"]] for w in ex["words"]]
    assert [text.lower()[a:b] for a, b in (w["span"] for w in ex["words"])] == [w["text"] for w in ex["words"]]
    assert abs(ex["patch_side"] + sum(w["contribution"] for w in ex["words"]) + ex["region"] - ex["fine_raw"]) < 1e-4
    png = Image.open(out)
    # a row per map (α′, then eq. 7 read per word): the image, then a map per word
    assert png.size == (8 + 168 * (len(ex["words"]) + 1), 40 + 2 * (160 + 28) + 8)
    assert all(abs(sum(map(sum, w["picked_by"])) - 1) < 1e-3 for w in ex["words"])
    assert "score" in ex and 0 <= ex["score"] <= 1  # the demo model is calibrated


def test_word_pieces_find_their_spans_and_admit_what_they_cannot() -> None:
    tok = Backbone.load(TINY_MODEL, from_scratch=True, device="cpu").tokenizer
    text = "A Red circle,  left of the BLUE square"
    pieces = word_pieces(tok, text, 100)
    assert [p.text for p in pieces][:3] == ["a", "red", "circle"]
    assert all(p.span is None or text.lower()[p.span[0]:p.span[1]] == p.text for p in pieces)
    assert len(word_pieces(tok, text, 2)) == 2  # cut where the text tower's context is
    # the tokenizer unescapes HTML: "&lt;" becomes "<", which the caption as given does not hold
    odd = word_pieces(tok, "i &lt;3 cats", 10)
    assert [p.text for p in odd if p.span is None] == ["<"]
    assert odd[-1].text == "cats" and odd[-1].span == (8, 12)


def test_explain_refuses_a_top_k_matcher(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="top_k = 0"):
        from training.model.bundle import load_bundle
        from training.model.explain import explain_one

        b = load_bundle(DEMO_MODEL, device="cpu")
        b.matcher.config.top_k = 16
        explain_one(b, None, "a red circle")


def test_picked_by_makes_the_words_compete_for_each_patch() -> None:
    """A generic word close to every patch and a specific word close to one patch: α′ of the generic word
    peaks wherever its cosine is highest, but under eq. 7 the specific word takes its patch from it."""
    import torch

    from training.model.explain import picked_by
    from training.model.matcher import Matcher, MatcherConfig

    m = Matcher(MatcherConfig(dim=16, num_patches=12, max_words=10))
    sim = torch.full((1, 2, 12), 0.5)
    sim[0, 0, 3] = 0.6  # the generic word's best patch is patch 3 ...
    sim[0, 1] = 0.0
    sim[0, 1, 3] = 0.9  # ... which the specific word fits far better
    with torch.no_grad():
        maps = picked_by(m, sim, torch.ones(1, 2, dtype=torch.bool))[0]
    assert torch.allclose(maps.sum(-1), torch.ones(2))
    assert int(maps[1].argmax()) == 3 and int(maps[0].argmin()) == 3
    assert picked_by(Matcher(MatcherConfig(dim=16, num_patches=12, max_words=10, interaction="camp")), sim,
                     torch.ones(1, 2, dtype=torch.bool)) is None
