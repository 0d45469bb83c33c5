"""Progress bars that suit where they are shown: live on a terminal, a line every few seconds in a log."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # how often a bar writes when stderr is a file or a pipe (CI, docker logs)


def progress_bar(iterable: Iterable[Any] | None = None, **kw: Any) -> tqdm:
    if not sys.stderr.isatty():
        kw.setdefault("mininterval", LOG_INTERVAL_S)
        kw.setdefault("maxinterval", LOG_INTERVAL_S * 3)
    return tqdm(iterable, **kw)
