"""The `finesearch` console script: one entry point, each subcommand defined in its own package."""

from __future__ import annotations

import argparse
import logging
import sys

from indexer import cli as indexer_cli
from indexer.stores import StoreError
from training import cli as training_cli
from training.backbone import BackboneError
from training.bundle import BundleError
from training.datasets import DatasetError
from training.tokenbank import TokenBankError

from . import serve

USER_ERRORS = (BackboneError, BundleError, StoreError, TokenBankError, DatasetError, FileNotFoundError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finesearch",
        description="Image-text search: CLIP recall in Qdrant, fine-grained patch-word reranking.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    indexer_cli.register(sub)
    training_cli.register(sub)
    serve.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # open_clip logs a warning for every deliberate random init
        logging.getLogger().setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"finesearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finesearch: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
