"""Indexing throughput of the CLI pipeline (decode → encode → write) against the pure encoder forward rate.

    python bench/bench_index.py [--backbones finesearch-tiny,ViT-B-32] [--images 320]

Real JPEGs (../shared/data/coco-mini, repeated with unique ids) and their captions; random-init weights
(the compute cost of ViT-B-32 is the same as with pretrained weights). The index pipeline includes the
default matcher's index-time preparation of every item (indexer/preparation.py), as `finesearch index
--model` runs it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import table, write

from indexer.items import ImageItem, TextItem
from indexer.pipeline import Indexer
from indexer.stores import open_store
from training.model.backbone import Backbone
from training.model.images import load_for_model
from training.model.matcher import Matcher
from training.train import matcher_config_for

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbones", default="finesearch-tiny,ViT-B-32")
    ap.add_argument("--images", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    paths = sorted((COCO / "images").glob("*.jpg"))
    caps = [a["caption"] for a in json.loads((COCO / "captions.json").read_text())["annotations"]]
    rows = []
    for name in a.backbones.split(","):
        bb = Backbone.load(name, from_scratch=True, device="cpu")
        pixels = np.stack([load_for_model(p, bb.image_size) for p in paths[: a.batch_size]])
        bb.encode_images(pixels)  # warm-up
        reps = max(2, a.images // a.batch_size // 2)
        t0 = time.perf_counter()
        for _ in range(reps):
            bb.encode_images(pixels)
        forward = reps * len(pixels) / (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            matcher = Matcher(matcher_config_for(bb, {})).eval()
            ix = Indexer(bb, open_store(tmp), tmp, batch_size=a.batch_size, workers=4, matcher=matcher)
            items = [ImageItem(path=paths[k % len(paths)], id=f"img-{k}") for k in range(a.images)]
            s = ix.index_images(items)
            texts = [TextItem(caps[k % len(caps)] + f" #{k}", id=f"t{k}") for k in range(a.images * 2)]
            st = ix.index_texts(texts)
            ix.close()
        rows.append({"backbone": name, "encoder_img_s": round(forward, 1), "index_img_s": round(s.rate, 1),
                     "ratio": round(forward / s.rate, 2), "index_txt_s": round(st.rate, 1),
                     "images": s.indexed, "failed": s.failed})
    print(table(rows, ["backbone", "encoder_img_s", "index_img_s", "ratio", "index_txt_s", "images", "failed"]))
    print("ratio = pure forward rate / end-to-end indexing rate (target ≤ 1.5)")
    print("results:", write("index", {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
