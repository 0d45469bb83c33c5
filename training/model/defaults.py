"""Names every command resolves the same way, importable without torch so that `--help` answers at once.

One rule picks the model for `index`, `serve`, `demo`, `eval` and `explain`: the `--model` flag, then
`FINESEARCH_MODEL`, then the demo bundle shipped in the repository. An index built by default can therefore
always be served by default: both sides encode with the same backbone and prepare with the same matcher.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL = "finesearch-tiny"
DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "demo"  # the repository root's models/

SYNTHETIC_NOTICE = (
    "the served model has the tiny demo backbone (finesearch-tiny), trained from scratch on synthetic coloured "
    "shapes: it knows nothing about real photos. For real search, serve a pretrained CLIP backbone "
    "(README: 'Real pretrained weights and real datasets')."
)

STOCK_NOTICE = (
    "reranking is unavailable: {name} is a stock backbone without a trained matcher, so results come from global "
    "similarity alone. To get it, train a matcher on your own captions (`finesearch train --data FILE --images "
    "DIR --format ... --backbone {name} --pretrained <the same weights> --out models/mine`), then run "
    "`finesearch index reprepare --model models/mine` (nothing is re-encoded) and serve models/mine."
)


def default_model(explicit: str | Path | None) -> Path:
    """The model bundle a command uses when it names none (`explicit` is the flag or the variable)."""
    return Path(explicit) if explicit else DEMO_BUNDLE
