"""The service's rerank stage alone: one query against 100 candidates, per matcher configuration.

    python bench/bench_rerank.py [--candidates 100] [--repeats 200] [--threads 2] [--match "UARDA,views,CAMP"]

This is the model work of one request after its encoding, without HTTP, recall or the token gather, so
configurations can be compared in one run on the same machine: "prepared" is the service's path (the query's
own preparation, which the service runs in its encoding call, then `Scorer.rerank`'s interaction and fusion
over candidates prepared at indexing);
"on the fly" also prepares the 100 candidates per query, as the service did before index-time preparation.
Weights are random (same compute as trained ones); captions have 12 words.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from common import summary, table, write

from training.model.matcher import Matcher, MatcherConfig, PreparedImages

BACKBONES = {"tiny": MatcherConfig(dim=128, num_patches=64, max_words=30),
             "ViT-B-32": MatcherConfig(dim=512, num_patches=49, max_words=75)}
VARIANTS = {  # changes from MatcherConfig's defaults
    "before: top-16 selector, adapters": {"top_k": 16, "word_context": False, "patch_position": False,
                                          "patch_context": False, "patch_adapter": True},
    "interim: all patches, adapters": {"word_context": False, "patch_position": False, "patch_context": False,
                                       "patch_adapter": True},
    "default: word context, positions, patch context": {},
    "default without patch context": {"patch_context": False},
    "default without word context": {"word_context": False},
    "default + patch adapter": {"patch_adapter": True},
    "default + UARDA relevance": {"relevance": "uarda"},
    "default + 4 region views": {"views": 4},
    "default + UARDA relevance + 4 region views": {"relevance": "uarda", "views": 4},
    "default + CAMP interaction": {"interaction": "camp"},
}


def time_rerank(m: Matcher, direction: str, k: int, words: int, repeats: int, prepared: bool) -> list[float]:
    c = m.config
    g = torch.Generator().manual_seed(0)
    patches = F.normalize(torch.randn(k, c.num_patches, c.dim, generator=g), dim=-1)
    globals_ = F.normalize(torch.randn(k, c.dim, generator=g), dim=-1)
    toks = F.normalize(torch.randn(k, words, c.dim, generator=g), dim=-1)
    mask = torch.ones(k, words, dtype=torch.bool)
    s_global = torch.rand(k, generator=g)
    ms = []
    with torch.inference_mode():
        # what the token bank holds for each candidate when it was prepared at indexing (fp16 there)
        stored_img = m.prepare_images(patches, globals_).patches.half()
        txt = m.prepare_texts(toks, mask, torch.zeros_like(globals_))
        stored_words, stored_lda = txt.words[:, :words].half(), txt.lda
        for r in range(repeats + 10):
            t = time.perf_counter()
            if direction == "t2i":  # one caption against k images
                q = m.prepare_texts(toks[:1], mask[:1], globals_[:1]).trimmed()  # paired with every candidate
                if prepared:
                    cand = PreparedImages.of_patches(stored_img)
                else:
                    cand = m.prepare_images(patches, globals_)
                m.rerank(q, cand, None, s_global)
            else:  # one image against k captions
                q = m.prepare_images(patches[:1], globals_[:1])
                if prepared:
                    cand = m.texts_from_words(stored_words.float(), mask, None, stored_lda).trimmed()
                else:
                    cand = m.prepare_texts(toks, mask, torch.zeros_like(globals_)).trimmed()
                m.rerank(q, cand, None, s_global)
            if r >= 10:  # warm-up excluded
                ms.append((time.perf_counter() - t) * 1000)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--words", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbones", default="tiny,ViT-B-32")
    ap.add_argument("--match", default="", help="only the matchers whose label contains one of these "
                                                "(comma-separated), e.g. \"positions,UARDA,views\"")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.backbones.split(","):
        for label, opts in VARIANTS.items():
            if a.match and not any(m.strip() in label for m in a.match.split(",")):
                continue
            torch.manual_seed(0)
            m = Matcher(replace(BACKBONES[name], **opts)).eval()
            for direction in ("t2i", "i2t"):
                for prepared in (False, True):
                    s = summary(time_rerank(m, direction, a.candidates, a.words, a.repeats, prepared))
                    where = "prepared" if prepared else "on the fly"
                    rows.append({"backbone": name, "matcher": label, "query": direction, "candidates": where, **s})
                    print(f"{name:8s} {label:40s} {direction} {where:10s} p50 {s['p50_ms']:.2f} ms", flush=True)
    print(table(rows, ["backbone", "matcher", "query", "candidates", "p50_ms", "p95_ms", "queries"]))
    print("results:", write("rerank", {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
