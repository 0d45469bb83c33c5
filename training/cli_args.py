"""Command-line options that choose a model or a backbone, shared by every subcommand that encodes.

Heavy modules (torch, open_clip) are imported only when a command runs, so that `--help` answers at once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .defaults import DEMO_BUNDLE, TINY_MODEL, default_model

if TYPE_CHECKING:
    from .backbone import Backbone


def add_backbone_args(parser: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        parser.add_argument("--model", type=Path, default=os.environ.get("FINESEARCH_MODEL"),
                            help="model bundle directory: its backbone encodes and its matcher prepares, so the index "
                                 "matches the served model (default: FINESEARCH_MODEL, else the demo bundle "
                                 f"{DEMO_BUNDLE.parent.name}/{DEMO_BUNDLE.name}, unless a backbone option is given)")
    g = parser.add_argument_group("backbone (instead of a model bundle; experts)")
    g.add_argument("--backbone", default=os.environ.get("FINESEARCH_BACKBONE"),
                   help=f"open_clip architecture, e.g. ViT-B-32 (default {TINY_MODEL} when --pretrained or "
                        "--from-scratch is given)")
    g.add_argument("--pretrained", default=os.environ.get("FINESEARCH_PRETRAINED"),
                   help="pretrained tag (e.g. laion2b_s34b_b79k, resolved from the local cache) or checkpoint file")
    g.add_argument("--from-scratch", action="store_true",
                   help="random initial weights (tests, benchmarks, training a tiny backbone)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random init with --from-scratch")
    g.add_argument("--cache-dir", default=None, help="where pretrained tags are looked up (default: open_clip's)")
    g.add_argument("--device", default=os.environ.get("FINESEARCH_DEVICE", "auto"), help="auto, cpu, cuda, cuda:1")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on GPU, fp32 on CPU")


def explicit_backbone(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "backbone", None) or getattr(args, "pretrained", None)
                or getattr(args, "from_scratch", False))


def resolve_model(args: argparse.Namespace) -> Path | None:
    """The bundle this command uses, written back to `args.model`; None when backbone options stand instead."""
    if getattr(args, "model", None) or not explicit_backbone(args):
        args.model = default_model(getattr(args, "model", None))
    return args.model


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    from .backbone import Backbone

    if "model" in vars(args) and resolve_model(args) is not None:
        from .bundle import load_bundle

        return load_bundle(args.model, device=args.device, precision=args.precision, cache_dir=args.cache_dir).backbone
    return Backbone.load(args.backbone or TINY_MODEL, args.pretrained, from_scratch=args.from_scratch,
                         device=args.device, precision=args.precision, cache_dir=args.cache_dir, seed=args.seed)
