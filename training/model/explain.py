"""Why a pair matched: two maps per caption word over the image's patch grid, from the matcher itself.

The numbers are the interaction's own (Matcher.interact): α′ of eq. 9 (a word's weights over the patches,
`patches`), eq. 7's attention of each patch over the words read per word (`picked_by`: where the word's object
is), the word's score s_w, and its LDA weight in the word side of the fine score, so that

    fine (raw) = (patch_side + Σ_words weight · score) / 2 + region

holds exactly for what is returned (`region`, ρ·S_region, is 0 for a matcher without views). Nothing here
is a separate saliency method.

A CAMP matcher (`interaction: "camp"`) has no such sum: its fine score is an MLP's logit. Its words carry
their message attention over the patches, their gate as `score` and their pooling weight as `weight`, and
`fine_raw` is the logit; `contribution` (weight · score / 2) then ranks the words, it does not add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .matcher import Matcher, PreparedImages, PreparedTexts


def picked_by(matcher: Matcher, sim: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor | None:
    """[..., L, K] eq. 7's attention read per word: each patch's softmax over the caption's words (its inverse
    temperature τ₁ learned; the interaction sharpens it once more before weighing the patch side), as a
    distribution over the patches for each word (times UARDA's relevance, as `patches` is). Where the word's
    object is: a patch of the red square gives "red" more of its attention than it gives "blue". None for
    CAMP, which has no eq. 7.

    Why next to α′ (eq. 9, `patches`): α′ asks which patch is most like the word, and a word's context mixes
    the other words into it, so its peak can sit on the other object; eq. 7 makes the words compete for each
    patch. On 1,514 colour words of two-colour captions (the demo's validation images), the strongest patch
    lay on the word's own object for 83 % under eq. 7 against 68 % under α′, one of the 3 strongest for 91 %
    against 73 %."""
    if matcher.camp is not None:
        return None
    m = txt_mask.to(sim.dtype)[..., None]
    inner = matcher.inner_attention(sim, 0, -2, (m - 1) * 1e4) * m
    inner = inner / inner.sum(-1, keepdim=True).clamp(min=1e-12)
    gate = matcher.relevance_gate(sim)  # gated after normalising: an irrelevant word's map sums to less than 1
    return inner if gate is None else inner * gate


@dataclass
class Piece:
    text: str  # the token as the tokenizer sees it (lower case, no end-of-word marker)
    span: tuple[int, int] | None  # its characters in the caption as given, when found there


def word_pieces(tokenizer: Any, text: str, n: int) -> list[Piece]:
    """The caption's first `n` word tokens (what the text tower's word positions hold), with character spans.

    open_clip's tokenizer cleans and lower-cases the text before its byte-level BPE, so each piece is looked
    up, in order, in the lower-cased caption; a piece it cannot find (an HTML entity the cleaner unescaped)
    gets no span rather than a wrong one."""
    ids = tokenizer.encode(text)[:n]
    lower, cursor, out = text.lower(), 0, []
    for i in ids:
        raw = tokenizer.decoder[i].replace("</w>", "")
        piece = bytearray(tokenizer.byte_decoder[c] for c in raw).decode("utf-8", errors="replace")
        at = lower.find(piece, cursor)
        if at >= 0:
            out.append(Piece(piece, (at, at + len(piece))))
            cursor = at + len(piece)
        else:
            out.append(Piece(piece, None))
    return out


def _rounded(x: torch.Tensor, digits: int) -> np.ndarray:
    """The page's numbers as float64, rounded once for the whole page (a `round` per value in Python cost as
    much as the matcher call); n / 10^digits in float64 prints as its short decimal form in JSON."""
    return np.round(x.detach().float().cpu().numpy().astype(np.float64), digits)


@torch.inference_mode()
def explain_pairs(matcher: Matcher, img: PreparedImages, txt: PreparedTexts, grid: tuple[int, int],
                  pieces: list[list[Piece]]) -> list[dict[str, Any]]:
    """Aligned pairs (image i, caption i) → one explanation each (`pieces[i]`: caption i's word tokens).

    One interaction call over the pairs given (the returned page, not every candidate)."""
    sim = torch.einsum("nkd,nld->nlk", img.patches, txt.words)
    inter = matcher.pair_interaction(sim, img.patches, txt.words, txt.mask, txt.lda, txt.importance)
    region = matcher.region_term(img, txt)
    if region is None:
        region = torch.zeros_like(inter.patch)
    fine = inter.patch + region
    picked = picked_by(matcher, sim, txt.mask)
    gh, gw = grid
    shape = (*inter.word_attention.shape[:2], gh, gw)
    att = _rounded(inter.word_attention, 5).reshape(shape)
    chosen = None if picked is None else _rounded(picked, 5).reshape(shape)
    scores, weights = _rounded(inter.word_scores, 6), _rounded(inter.word_weights, 6)
    shares = _rounded(inter.word_scores * inter.word_weights / 2, 6)
    fine_raw, patch_side, regions = _rounded(fine, 6), _rounded(inter.patch_side / 2, 6), _rounded(region, 6)
    out = []
    for i, words in enumerate(pieces):
        n = min(len(words), int(txt.mask[i].sum()))
        out.append({
            "grid": [gh, gw],
            "fine_raw": float(fine_raw[i]), "patch_side": float(patch_side[i]), "region": float(regions[i]),
            "words": [{"text": w.text, "span": list(w.span) if w.span else None, "score": float(scores[i, k]),
                       "weight": float(weights[i, k]), "contribution": float(shares[i, k]),
                       "patches": att[i, k].tolist(), "picked_by": None if chosen is None else chosen[i, k].tolist()}
                      for k, w in enumerate(words[:n])],
        })
    return out


@torch.inference_mode()
def explain_one(bundle: Any, pixels: Any, text: str) -> dict[str, Any]:
    """One image (model-input pixels) and one caption through the bundle: scores and the explanation."""
    from .tokens import pad_words

    m, bb = bundle.matcher, bundle.backbone
    if m.config.top_k:
        raise ValueError("this matcher keeps only its top-K patches per image: their places on the grid are not "
                         "kept, so there is no map to draw (explanations need top_k = 0)")
    img_f, txt_f = bb.encode_images(np.array(pixels)[None]), bb.encode_texts([text])
    n = int(txt_f.mask.sum())
    img = m.prepare_images(img_f.tokens.float(), img_f.globals.float())
    words, mask = pad_words(txt_f.tokens[:, :n].float(), txt_f.mask[:, :n], m.config.max_words)
    txt = m.prepare_texts(words, mask, txt_f.globals.float()).trimmed()
    cosine = float((img_f.globals.float() * txt_f.globals.float()).sum())
    fused, _ = m.score_pairs(img, txt, torch.tensor([cosine]), "t2i")
    ex = explain_pairs(m, img, txt, bb.grid, [bb.word_pieces(text, n)])[0]
    out: dict[str, Any] = {"text": text, "cosine": round(cosine, 6), "fused_raw": round(float(fused[0]), 6), **ex}
    if bool(m.calibrated):
        out["score"] = round(float(m.calibrate(fused, "t2i", "fused")[0]), 6)
        out["global_score"] = round(float(m.calibrate(torch.tensor([cosine]), "t2i", "global")[0]), 6)
        out["fine_score"] = round(float(m.calibrate(torch.tensor([ex["fine_raw"]]), "t2i", "fine")[0]), 6)
    return out


def render(image: Any, explanation: dict[str, Any], side: int = 160) -> Any:
    """The image, then one small map per word over it, labelled with the word and its contribution; the scores
    on top. A row per map: eq. 9's attention α′ (`patches`), then eq. 7 read per word (`picked_by`, absent for
    CAMP). A PIL image."""
    from PIL import Image, ImageDraw

    base = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    words = explanation["words"]
    maps = [("patches", "eq. 9: each word's attention")]
    if words and words[0].get("picked_by") is not None:
        maps.append(("picked_by", "eq. 7: where each word is"))
    pad, label, header = 8, 28, 40
    row_h = side + label
    canvas = Image.new("RGB", (pad + (side + pad) * (len(words) + 1), header + row_h * len(maps) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    scores = [f"cosine {explanation['cosine']:.3f}", f"fine (raw) {explanation['fine_raw']:.3f}"]
    scores += [f"{k.replace('_', ' ')} {explanation[k]:.3f}" for k in ("global_score", "fine_score", "score")
               if k in explanation]
    draw.text((pad, 6), explanation["text"], fill="black")
    draw.text((pad, 22), " · ".join(scores), fill=(90, 90, 90))
    grey = np.asarray(base.convert("L").convert("RGB"), dtype=np.float32)
    hot = np.array([230.0, 40.0, 30.0])
    for r, (key, title) in enumerate(maps):
        y = header + r * row_h
        canvas.paste(base, (pad, y))
        draw.text((pad, y + side + 6), title, fill="black")
        for k, w in enumerate(words, 1):
            att = np.asarray(w[key], dtype=np.float32)
            heat = Image.fromarray((255 * att / max(float(att.max()), 1e-9)).astype(np.uint8)).resize(
                (side, side), Image.Resampling.NEAREST)
            h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
            blend = (0.45 * grey + 0.55 * (h * hot + (1 - h) * grey)).clip(0, 255).astype(np.uint8)
            x = pad + k * (side + pad)
            canvas.paste(Image.fromarray(blend), (x, y))
            draw.text((x, y + side + 6), f"{w['text']}  {w['contribution']:+.3f}", fill="black")
    return canvas
