"""The service's rerank stage alone: one query against 100 candidates, per matcher configuration.

    python bench/bench_rerank.py [--candidates 100] [--repeats 200] [--threads 2]

This is what `engine._rerank` runs for one request (query preparation, candidate preparation, the
interaction and the fusion), without HTTP, recall or the token gather, so configurations can be compared
in one run on the same machine. Weights are random (same compute as trained ones); captions have 12 words.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from common import summary, table, write

from training.matcher import Matcher, MatcherConfig

BACKBONES = {"tiny": MatcherConfig(dim=128, num_patches=64, max_words=30),
             "ViT-B-32": MatcherConfig(dim=512, num_patches=49, max_words=75)}
VARIANTS = {  # changes from MatcherConfig's defaults
    "before: top-16 selector, adapters": {"top_k": 16, "word_context": False, "patch_position": False,
                                          "patch_adapter": True},
    "interim: all patches, adapters": {"word_context": False, "patch_position": False, "patch_adapter": True},
    "default: word context, positions": {},
    "default + patch adapter": {"patch_adapter": True},
    "default + patch context": {"patch_context": True},
}


def time_rerank(m: Matcher, direction: str, k: int, words: int, repeats: int) -> list[float]:
    c = m.config
    g = torch.Generator().manual_seed(0)
    patches = F.normalize(torch.randn(k, c.num_patches, c.dim, generator=g), dim=-1)
    globals_ = F.normalize(torch.randn(k, c.dim, generator=g), dim=-1)
    toks = F.normalize(torch.randn(k, words, c.dim, generator=g), dim=-1)
    mask = torch.ones(k, words, dtype=torch.bool)
    s_global = torch.rand(k, generator=g)
    ms = []
    with torch.inference_mode():
        for r in range(repeats + 10):
            t = time.perf_counter()
            if direction == "t2i":  # one caption against k images
                q = m.prepare_texts(toks[:1], mask[:1], globals_[:1]).trimmed().take(torch.zeros(k, dtype=torch.long))
                cand = m.prepare_images(patches, globals_)
                m.score_pairs(cand, q, s_global, direction)
            else:  # one image against k captions
                q = m.prepare_images(patches[:1], globals_[:1]).take(torch.zeros(k, dtype=torch.long))
                cand = m.prepare_texts(toks, mask, torch.zeros_like(globals_)).trimmed()
                m.score_pairs(q, cand, s_global, direction)
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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.backbones.split(","):
        for label, opts in VARIANTS.items():
            torch.manual_seed(0)
            m = Matcher(replace(BACKBONES[name], **opts)).eval()
            for direction in ("t2i", "i2t"):
                s = summary(time_rerank(m, direction, a.candidates, a.words, a.repeats))
                rows.append({"backbone": name, "matcher": label, "query": direction, **s})
                print(f"{name:8s} {label:45s} {direction}  p50 {s['p50_ms']:.2f} ms", flush=True)
    print(table(rows, ["backbone", "matcher", "query", "p50_ms", "p95_ms", "queries"]))
    print("results:", write("rerank", {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
