"""What may be written: the item-id rule and the bounds on user metadata, for every way in.

HTTP uploads, `/v1/texts`, bulk jobs and the `finesearch index` CLI all end in
`Indexer`, which checks each item here before anything is encoded or written, so
one rule holds everywhere and a bad item fails alone. Why these bounds: Qdrant
Edge accepts a payload nested ~130 levels deep and then cannot replay its own
WAL on restart, refuses NaN/Infinity and lone surrogates only after our token
rows are written, and silently turns integers beyond 64 bits into floats.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class PayloadRejected(ValueError):
    """A payload or id that must not be stored; the message names the problem and the limit."""

    def __init__(self, message: str, code: str = "invalid_metadata", too_large: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.too_large = too_large  # over a size or count limit, rather than malformed


@dataclass(frozen=True)
class PayloadLimits:
    """The bounds; the service fills them from its settings (`FINESEARCH_MAX_*`), the CLI uses the defaults."""

    max_id_chars: int = 512
    max_text_chars: int = 1000
    max_metadata_depth: int = 10
    max_metadata_keys: int = 256
    max_metadata_bytes: int = 16 * 1024

    @classmethod
    def from_settings(cls, settings: Any) -> PayloadLimits:
        return cls(settings.max_id_chars, settings.max_text_chars, settings.max_metadata_depth,
                   settings.max_metadata_keys, settings.max_metadata_bytes)


ID_RULE = ("ids are 1 to {n} characters of valid Unicode without '/', '\\' or control characters, "
           "and not '.' or '..'")


def id_problem(item_id: Any, max_chars: int = 512) -> str | None:
    """Why `item_id` breaks the id rule, or None.

    The one rule: ids travel as one URL path segment (`/v1/images/{id}`), so '/' and '\\' (which browsers
    read as '/'), the dot segments that clients collapse, and control characters are refused everywhere.
    Anything else works once percent-encoded, which is how `content_url` is built.
    """
    if not isinstance(item_id, str):
        return f"id must be a string, not {type(item_id).__name__}"
    if not item_id:
        return "id is empty"
    if len(item_id) > max_chars:
        return f"id is {len(item_id)} characters long; the limit is {max_chars} (max_id_chars)"
    if item_id in (".", ".."):
        return f"id {item_id!r} is not allowed: {ID_RULE.format(n=max_chars)}"
    for ch in item_id:
        if ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cs"):
            return f"id {ascii(item_id)[:80]} contains {ascii(ch)}: {ID_RULE.format(n=max_chars)}"
    return None


def check_id(item_id: Any, max_chars: int = 512) -> str:
    problem = id_problem(item_id, max_chars)
    if problem:
        raise PayloadRejected(problem, "invalid_id")
    return item_id


def _bad_string(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_value(value: Any, where: str, max_depth: int, depth: int = 0) -> tuple[int, int]:
    """Walk a JSON-like value: finite numbers, int64 integers, valid Unicode, bounded nesting.

    Returns (deepest container level, object keys seen). Recursion stops at `max_depth`, so a hostile
    value can never exhaust the interpreter's stack.
    """
    if isinstance(value, bool) or value is None:
        return depth, 0
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise PayloadRejected(f"{where}: integer {value if abs(value) < 10**30 else '...'} is outside the "
                                  f"64-bit range [-2**63, 2**63-1]", "invalid_number")
        return depth, 0
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PayloadRejected(f"{where}: {value} is not a finite number (NaN and Infinity are not JSON)",
                                  "invalid_number")
        return depth, 0
    if isinstance(value, str):
        if _bad_string(value):
            raise PayloadRejected(f"{where}: a string holds a lone surrogate (invalid Unicode)", "invalid_unicode")
        return depth, 0
    if isinstance(value, (dict, list, tuple)):
        level = depth + 1
        if level > max_depth:
            raise PayloadRejected(f"{where} is nested more than {max_depth} levels deep; the limit is {max_depth} "
                                  "(max_metadata_depth)", "too_deep")
        deepest, keys = level, 0
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in children:
            if isinstance(value, dict):
                if not isinstance(k, str):
                    raise PayloadRejected(f"{where}: keys must be strings")
                if _bad_string(k):
                    raise PayloadRejected(f"{where}: a key holds a lone surrogate (invalid Unicode)",
                                          "invalid_unicode")
                keys += 1
            d, n = check_value(v, where, max_depth, level)
            deepest, keys = max(deepest, d), keys + n
        return deepest, keys
    raise PayloadRejected(f"{where}: {type(value).__name__} is not a JSON value")


def check_metadata(meta: Any, limits: PayloadLimits = PayloadLimits(), where: str = "metadata") -> dict[str, Any]:
    """The metadata object of one item, or PayloadRejected saying which bound it breaks."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise PayloadRejected(f"{where} must be a JSON object, not {type(meta).__name__}")
    _, keys = check_value(meta, where, limits.max_metadata_depth)
    if keys > limits.max_metadata_keys:
        raise PayloadRejected(f"{where} has {keys} keys; the limit is {limits.max_metadata_keys} "
                              "(max_metadata_keys)", "metadata_too_large", too_large=True)
    size = len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_metadata_bytes:
        raise PayloadRejected(f"{where} is {size} bytes as JSON; the limit is {limits.max_metadata_bytes} "
                              "(max_metadata_bytes)", "metadata_too_large", too_large=True)
    return meta


def path_id(relative: str) -> str:
    """`--id-from path`: the relative path with its separators turned into ':' so that it obeys the id rule."""
    return ":".join(part for part in relative.replace("\\", "/").split("/") if part)
