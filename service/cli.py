"""The `finesearch` console script: one entry point, each subcommand defined in its own package.

Building the parser imports nothing heavy (torch, open_clip, FastAPI come with the command that needs
them), so `finesearch --help` and typos answer at once; `bench/bench_cli.py` measures it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from indexer import cli as indexer_cli
from training import cli as training_cli

from . import serve

if TYPE_CHECKING:
    from .config import Settings


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or isinstance(action, argparse._HelpAction | argparse._VersionAction)):
            return text
        return f"{text} (default: %(default)s)"


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: one line, exit 2. Imported when raised, not at start-up."""
    from indexer.stores import StoreError
    from indexer.tokenbank import TokenBankError
    from training.datasets import DatasetError
    from training.model.backbone import BackboneError
    from training.model.bundle import BundleError

    return BackboneError, BundleError, StoreError, TokenBankError, DatasetError, FileNotFoundError, ValueError


def load_settings() -> Settings:
    """The one configuration source, read once the command is known (not for `--help`: pydantic-settings and
    the .env file are not needed to print it). A malformed FINESEARCH_* value is the user's to fix."""
    from pydantic import ValidationError

    from .config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"FINESEARCH_{'_'.join(str(x) for x in e['loc']).upper()}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"invalid setting ({problems})") from None


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("finesearch")
    except PackageNotFoundError:  # a source tree without install
        return "0+unknown"


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand's parser, at every depth."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finesearch",
        description="Image-text search: CLIP recall in Qdrant, fine-grained patch-word reranking.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    indexer_cli.register(sub)
    training_cli.register(sub)
    serve.register(sub)
    for p in parsers(parser):
        p.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # open_clip logs a warning for every deliberate random init
        logging.getLogger().setLevel(logging.ERROR)
    try:
        load_settings().fill_args(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("finesearch: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        print(f"finesearch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
