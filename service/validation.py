"""Strict, cheap JSON for hostile clients: shape checked before the parse, values while parsing.

Why not plain `json.loads` + pydantic: Python's parser accepts NaN and Infinity, turns `1e999` into
infinity, keeps lone surrogates from `\\ud800` escapes and recurses until the interpreter gives up;
pydantic then materialises a million items before any count is compared with a limit. Here:

1. `prescan` measures the document without building it: numpy marks the bytes inside strings (escaped
   quotes included), then finds the nesting depth and the element count of every array and object. A body over a
   depth or count limit is refused at the cost of a byte scan.
2. `strict_loads` parses with hooks that refuse non-finite numbers and integers outside int64 as they
   are read, then (only when the body holds a surrogate escape) walks the result for lone surrogates.

Every limit comes from `Settings` and is named in the message.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.validation import (
    INT64_MAX,
    INT64_MIN,
    PayloadLimits,
    PayloadRejected,
    check_id,
    check_metadata,
    check_value,
)

from .config import Settings
from .exceptions import InvalidRequest, ServiceError, TooLarge

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class JsonShape:
    depth: int  # deepest container level; the root container is level 1
    items: dict[int, int]  # container level → most elements any container at that level holds


_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[[ord(c) for c in "[]{},"]] = True
_QUOTE, _BACKSLASH = ord('"'), ord("\\")


def _string_mask(raw: np.ndarray) -> np.ndarray:
    """uint8 per byte: 1 inside a string (and on its opening quote), 0 outside; escaped quotes do not count."""
    quote = raw == _QUOTE
    if _BACKSLASH in raw:
        q = np.flatnonzero(quote)
        bs = np.flatnonzero(raw == _BACKSLASH)
        run_starts = bs[np.r_[True, np.diff(bs) != 1]]
        k = np.searchsorted(bs, q) - 1  # the last backslash before each quote
        kk = np.maximum(k, 0)
        touching = (k >= 0) & (bs[kk] == q - 1)
        run = bs[kk] - run_starts[np.searchsorted(run_starts, bs[kk], side="right") - 1] + 1
        quote[q[touching & (run % 2 == 1)]] = False  # preceded by an odd run of backslashes: escaped
    return np.bitwise_xor.accumulate(quote.view(np.uint8))


def prescan(data: bytes) -> JsonShape:
    """Depth and per-level element counts of a JSON document, without parsing it (linear, vectorised).

    Only the structural bytes outside strings are kept (`[]{},`), so the arrays that follow are small.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    pos = np.flatnonzero(_STRUCTURAL[raw] & (_string_mask(raw) == 0)) if len(raw) else np.zeros(0, np.int64)
    kind = raw[pos]
    step = np.where((kind == ord("[")) | (kind == ord("{")), 1, np.where(kind == ord(","), 0, -1)).astype(np.int32)
    if not (step == 1).any():
        return JsonShape(0, {})
    level = np.cumsum(step)  # level after each structural byte
    opener = np.flatnonzero(step == 1)
    open_level = level[opener]
    comma = np.flatnonzero(step == 0)
    comma_level = level[comma]
    # the container of a comma is the last opener at the comma's level before it: search a (level, index) key
    span = len(pos) + 1
    keys = open_level.astype(np.int64) * span + opener
    order = np.argsort(keys, kind="stable")
    owner = np.searchsorted(keys[order], comma_level.astype(np.int64) * span + comma) - 1
    valid = owner >= 0
    valid[valid] &= open_level[order[owner[valid]]] == comma_level[valid]
    per_container = np.bincount(order[owner[valid]], minlength=len(opener)) + 1
    items: dict[int, int] = {}
    for lvl in np.unique(open_level):
        if lvl > 0:
            items[int(lvl)] = int(per_container[open_level == lvl].max())
    return JsonShape(int(level.max()), items)


@dataclass(frozen=True)
class CountRule:
    level: int
    limit_name: str
    code: str
    message: str  # formatted with n (found) and limit


#: Route-specific counts by container level, checked before the generic max_json_items.
ROUTE_RULES: dict[str, tuple[CountRule, ...]] = {
    "/v1/texts": (CountRule(2, "max_texts_per_request", "too_many_items",
                            "{n} texts in one request; the limit is {limit} (max_texts_per_request)"),),
    "/v1/search/images": (
        CountRule(2, "max_filter_fields", "too_many_values",
                  "the filter has {n} fields; the limit is {limit} (max_filter_fields)"),
        CountRule(3, "max_filter_values", "too_many_values",
                  "a filter field lists {n} values; the limit is {limit} (max_filter_values)")),
}
ROUTE_RULES["/v1/search/texts"] = ROUTE_RULES["/v1/search/images"]
#: A filter sent as a form field (multipart image search) is its own document: one level up.
FILTER_RULES = tuple(CountRule(r.level - 1, r.limit_name, r.code, r.message) for r in ROUTE_RULES["/v1/search/images"])


def check_shape(data: bytes, settings: Settings, rules: tuple[CountRule, ...] = (), what: str = "JSON body") -> None:
    shape = prescan(data)
    if shape.depth > settings.max_json_depth:
        raise InvalidRequest(f"{what} is nested {shape.depth} levels deep; the limit is {settings.max_json_depth} "
                             "(max_json_depth)", "too_deep")
    ruled = {r.level for r in rules}
    for rule in rules:
        n, limit = shape.items.get(rule.level, 0), getattr(settings, rule.limit_name)
        if n > limit:
            raise TooLarge(rule.message.format(n=n, limit=limit), rule.code)
    for lvl, n in shape.items.items():
        if lvl not in ruled and n > settings.max_json_items:
            raise TooLarge(f"a JSON array or object in the {what} holds {n} elements; the limit is "
                           f"{settings.max_json_items} (max_json_items)", "too_many_items")


def _constant(name: str) -> Any:
    raise PayloadRejected(f"{name} is not a JSON number (NaN and Infinity are refused)", "invalid_number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PayloadRejected(f"number {text[:40]} is out of the range of a 64-bit float", "invalid_number")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19:  # cheaper than int() on a 4000-digit string, and int() has its own cap
        raise PayloadRejected(f"integer {text[:25]}... is outside the 64-bit range [-2**63, 2**63-1]",
                              "invalid_number")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise PayloadRejected(f"integer {text} is outside the 64-bit range [-2**63, 2**63-1]", "invalid_number")
    return value


def strict_loads(data: bytes, settings: Settings, rules: tuple[CountRule, ...] = (), what: str = "JSON body") -> Any:
    """Parse `data` or raise TooLarge (over a count) or InvalidRequest; the shape is checked first."""
    check_shape(data, settings, rules, what)
    try:
        value = json.loads(data, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except PayloadRejected as exc:
        raise refusal(exc, f"{what}: {exc}") from exc
    except RecursionError as exc:  # unreachable after the depth check; kept so it can never become an internal error
        raise InvalidRequest(f"{what} is nested too deeply", "too_deep") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError (bytes that are not UTF-8)
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from exc
    if _SURROGATE_ESCAPE.search(data):
        try:
            check_value(value, what, settings.max_json_depth)
        except PayloadRejected as exc:
            raise refusal(exc) from exc
    return value


def refusal(exc: PayloadRejected, message: str | None = None) -> ServiceError:
    """The indexer's rejection of a payload, as the service's refusal."""
    return (TooLarge if exc.too_large else InvalidRequest)(message or str(exc), exc.code)


def payload_limits(settings: Settings) -> PayloadLimits:
    return PayloadLimits.from_settings(settings)


def valid_metadata(meta: Any, settings: Settings, where: str) -> dict[str, Any]:
    try:
        return check_metadata(meta, payload_limits(settings), where)
    except PayloadRejected as exc:
        raise refusal(exc) from exc


def valid_id(item_id: Any, settings: Settings, where: str = "id") -> str:
    try:
        return check_id(item_id, settings.max_id_chars)
    except PayloadRejected as exc:
        raise InvalidRequest(f"{where}: {exc}", exc.code) from exc


def valid_filter(spec: Any, settings: Settings) -> None:
    """Counts of a parsed filter (a JSON body's filter was already counted by the prescan; a form's was not)."""
    if spec is None:
        return
    if len(spec) > settings.max_filter_fields:
        raise TooLarge(f"the filter has {len(spec)} fields; the limit is {settings.max_filter_fields} "
                       "(max_filter_fields)", "too_many_values")
    for value in spec.values():
        if isinstance(value, list) and len(value) > settings.max_filter_values:
            raise TooLarge(f"a filter field lists {len(value)} values; the limit is "
                           f"{settings.max_filter_values} (max_filter_values)", "too_many_values")
