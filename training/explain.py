"""Why a pair matched: each caption word's attention over the image's patch grid, from the matcher itself.

The numbers are the interaction's own (Matcher.interact): α′ of eq. 9 (a word's weights over the patches),
the word's score s_w, and its LDA weight in the word side of the fine score, so that

    fine (raw) = (patch_side + Σ_words weight · score) / 2

holds exactly for what is returned. Nothing here is a separate saliency method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .matcher import Matcher, PreparedImages, PreparedTexts


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


@torch.inference_mode()
def explain_pairs(matcher: Matcher, img: PreparedImages, txt: PreparedTexts, grid: tuple[int, int],
                  pieces: list[list[Piece]]) -> list[dict[str, Any]]:
    """Aligned pairs (image i, caption i) → one explanation each (`pieces[i]`: caption i's word tokens).

    One interaction call over the pairs given (the returned page, not every candidate)."""
    sim = torch.einsum("nkd,nld->nlk", img.patches, txt.words)
    inter = matcher.interact(sim, txt.mask, txt.lda, txt.importance)
    gh, gw = grid
    out = []
    for i, words in enumerate(pieces):
        n = min(len(words), int(txt.mask[i].sum()))
        att = inter.word_attention[i, :n].float().cpu().view(n, gh, gw)
        scores, weights = inter.word_scores[i, :n].float().cpu(), inter.word_weights[i, :n].float().cpu()
        out.append({
            "grid": [gh, gw],
            "fine_raw": round(float(inter.patch[i]), 6),
            "patch_side": round(float(inter.patch_side[i]) / 2, 6),
            "words": [{"text": w.text, "span": list(w.span) if w.span else None, "score": round(float(scores[k]), 6),
                       "weight": round(float(weights[k]), 6),
                       "contribution": round(float(weights[k] * scores[k]) / 2, 6),
                       "patches": [[round(float(v), 5) for v in row] for row in att[k].tolist()]}
                      for k, w in enumerate(words[:n])],
        })
    return out
