"""Tiny random Hugging Face CLIP and SigLIP directories, written the way `save_pretrained` writes real ones.

The tokenizer is CLIP's byte-level BPE (open_clip ships its merges), so nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch


def write_tokenizer(out: Path, context: int) -> None:
    from transformers import CLIPTokenizer

    t = open_clip.get_tokenizer("ViT-B-32")
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (out / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in t.encoder.items()}))
    merges = sorted(t.bpe_ranks, key=t.bpe_ranks.get)
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=context).save_pretrained(out)


def tiny_hf_dir(out: Path, kind: str, seed: int = 0, image_size: int = 32) -> Path:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    out.mkdir(parents=True, exist_ok=True)
    context = 32 if kind == "clip" else 16
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": context, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": 8}
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    else:
        model = SiglipModel(SiglipConfig(text_config={**text, "projection_size": 32}, vision_config=vision))
    model.save_pretrained(out)
    write_tokenizer(out, context)
    return out
