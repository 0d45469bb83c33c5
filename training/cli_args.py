"""Command-line options that choose a backbone, shared by every subcommand that encodes."""

from __future__ import annotations

import argparse
import os

from .backbone import TINY_MODEL, Backbone


def add_backbone_args(parser: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        parser.add_argument("--model", default=os.environ.get("FINESEARCH_MODEL"),
                            help="model bundle directory: its backbone encodes (so the index matches the served model)")
    g = parser.add_argument_group("backbone (ignored when a model bundle is given)")
    g.add_argument("--backbone", default=os.environ.get("FINESEARCH_BACKBONE", TINY_MODEL),
                   help=f"open_clip architecture, e.g. ViT-B-32 (default {TINY_MODEL})")
    g.add_argument("--pretrained", default=os.environ.get("FINESEARCH_PRETRAINED"),
                   help="pretrained tag (e.g. laion2b_s34b_b79k, resolved from the local cache) or checkpoint file")
    g.add_argument("--from-scratch", action="store_true",
                   help="random initial weights (tests, benchmarks, training a tiny backbone)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random init with --from-scratch")
    g.add_argument("--cache-dir", default=None, help="where pretrained tags are looked up")
    g.add_argument("--device", default=os.environ.get("FINESEARCH_DEVICE", "auto"), help="auto, cpu, cuda, cuda:1")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    if getattr(args, "model", None):
        from .bundle import load_bundle

        return load_bundle(args.model, device=args.device, precision=args.precision, cache_dir=args.cache_dir).backbone
    return Backbone.load(args.backbone, args.pretrained, from_scratch=args.from_scratch, device=args.device,
                         precision=args.precision, cache_dir=args.cache_dir, seed=args.seed)
