"""Command-line options that choose a model or a backbone, shared by every subcommand that encodes.

Heavy modules (torch, open_clip) are imported only when a command runs, so that `--help` answers at once.
Options that are also settings default to None here: `finesearch`'s entry point fills them from the service's
one `Settings` (FINESEARCH_* variables, then .env) after parsing, so every command reads configuration the
same way and this package reads no environment itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .model.defaults import DEMO_BUNDLE, TINY_MODEL, default_model

if TYPE_CHECKING:
    from .model.backbone import Backbone


def add_backbone_args(parser: argparse.ArgumentParser, with_model: bool = True) -> None:
    if with_model:
        parser.add_argument("--model", type=Path, default=None,
                            help="model bundle directory: its backbone encodes and its matcher prepares, so the index "
                                 "matches the served model (default: FINESEARCH_MODEL, else the demo bundle "
                                 f"{DEMO_BUNDLE.parent.name}/{DEMO_BUNDLE.name}, unless a backbone option is given)")
    g = parser.add_argument_group("backbone (instead of a model bundle; experts)")
    g.add_argument("--backbone", default=None,
                   help=f"open_clip architecture, e.g. ViT-B-32 (default: FINESEARCH_BACKBONE, else {TINY_MODEL} "
                        "when --pretrained or --from-scratch is given)")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag (e.g. laion2b_s34b_b79k, resolved from the local cache) or checkpoint file "
                        "(default: FINESEARCH_PRETRAINED)")
    g.add_argument("--from-scratch", action="store_true",
                   help="random initial weights (tests, benchmarks, training a tiny backbone)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random init with --from-scratch")
    g.add_argument("--cache-dir", default=None,
                   help="where pretrained tags are looked up (default: FINESEARCH_CACHE_DIR, else open_clip's)")
    g.add_argument("--allow-download", action="store_const", const=True, default=None,
                   help="let a pretrained tag missing from the cache be downloaded (default: "
                        "FINESEARCH_ALLOW_DOWNLOAD, else off: offline hosts fail fast)")
    add_device_arg(g)
    g.add_argument("--precision", default=None, choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on GPU, fp32 on CPU (default: FINESEARCH_PRECISION, else auto)")


def add_device_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--device", default=None,
                        help="auto, cpu, cuda, cuda:1 (default: FINESEARCH_DEVICE, else auto)")


def explicit_backbone(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "backbone", None) or getattr(args, "pretrained", None)
                or getattr(args, "from_scratch", False))


def resolve_model(args: argparse.Namespace) -> Path | None:
    """The bundle this command uses, written back to `args.model`; None when backbone options stand instead."""
    if getattr(args, "model", None) or not explicit_backbone(args):
        args.model = default_model(getattr(args, "model", None))
    return args.model


def backbone_from_args(args: argparse.Namespace) -> Backbone:
    from .model.backbone import Backbone

    if "model" in vars(args) and resolve_model(args) is not None:
        from .model.bundle import load_bundle

        return load_bundle(args.model, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
                           allow_download=bool(args.allow_download)).backbone
    return Backbone.load(args.backbone or TINY_MODEL, args.pretrained, from_scratch=args.from_scratch,
                         device=args.device, precision=args.precision, cache_dir=args.cache_dir, seed=args.seed,
                         allow_download=bool(args.allow_download))
