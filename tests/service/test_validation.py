"""The cheap pre-parse scan and the strict parser on their own: exact shapes, and every refusal named."""

from __future__ import annotations

import json

import pytest

from indexer.validation import PayloadLimits, PayloadRejected, check_metadata, id_problem, path_id
from service.config import Settings
from service.errors import status_of
from service.exceptions import ServiceError
from service.validation import ROUTE_RULES, prescan, strict_loads

S = Settings.model_construct()


@pytest.mark.parametrize(("doc", "depth", "items"), [
    ("1", 0, {}),
    ("[]", 1, {1: 1}),
    ('{"a": [1, 2, 3], "b": {"c": [4]}}', 3, {1: 2, 2: 3, 3: 1}),
    ('[[1, 2], [3, 4, 5, 6], {"x": "[[[,,,]]]"}]', 2, {1: 3, 2: 4}),
    ('{"s": "a \\" [ { , quote"}', 1, {1: 1}),
    ('{"a": "ends in a backslash \\\\", "b": [1, 2]}', 2, {1: 2, 2: 2}),
    ('{"a": "\\\\\\"[,", "b": {"c": "\\\\\\\\"}}', 2, {1: 2, 2: 1}),
    ('{"items": [' + ",".join(['{"text": "a, b"}'] * 7) + "]}", 3, {1: 1, 2: 7, 3: 1}),
])
def test_prescan_measures_depth_and_counts_without_parsing(doc: str, depth: int, items: dict[int, int]) -> None:
    json.loads(doc)
    shape = prescan(doc.encode())
    assert shape.depth == depth and shape.items == items


@pytest.mark.parametrize(("body", "status", "code", "says"), [
    (b"[" * 40 + b"]" * 40, 422, "too_deep", "max_json_depth"),
    (b'{"v": NaN}', 422, "invalid_number", "NaN"),
    (b'{"v": Infinity}', 422, "invalid_number", "NaN and Infinity"),
    (b'{"v": -1e400}', 422, "invalid_number", "64-bit float"),
    (b'{"v": 9223372036854775808}', 422, "invalid_number", "64-bit range"),
    (b'{"v": -' + b"9" * 5000 + b"}", 422, "invalid_number", "64-bit range"),
    (b'{"v": ["ok", {"\\uDBFF": 1}]}', 422, "invalid_unicode", "surrogate"),
    (b'{"v": "\xff\xfe"}', 422, "invalid_request", "not valid JSON"),
    (b"[" + b"1," * 1500 + b"1]", 413, "too_many_items", "max_json_items"),
])
def test_strict_loads_refuses_with_the_limit_named(body: bytes, status: int, code: str, says: str) -> None:
    with pytest.raises(ServiceError) as err:
        strict_loads(body, S)
    assert (status_of(err.value), err.value.code) == (status, code) and says in err.value.message


def test_route_rules_come_before_the_generic_count() -> None:
    body = b'{"items": [' + b",".join([b'{"text": "x"}'] * 1001) + b"]}"
    with pytest.raises(ServiceError, match=r"1001 texts in one request; the limit is 1000 \(max_texts_per_request\)"):
        strict_loads(body, S, ROUTE_RULES["/v1/texts"])
    assert strict_loads(b'{"v": [9223372036854775807, -9223372036854775808, 1.5, "\\u00e9"]}', S) == {
        "v": [2**63 - 1, -(2**63), 1.5, "é"]}


def test_metadata_bounds_and_the_id_rule() -> None:
    limits = PayloadLimits(max_metadata_depth=3, max_metadata_keys=4, max_metadata_bytes=40)
    assert check_metadata({"a": {"b": [1]}}, limits) == {"a": {"b": [1]}}
    for bad, code in (({"a": {"b": {"c": [1]}}}, "too_deep"), ({str(k): k for k in range(5)}, "metadata_too_large"),
                      ({"a": "x" * 50}, "metadata_too_large"), ([1], "invalid_metadata"),
                      ({"a": float("nan")}, "invalid_number"), ({"a": -(2**63) - 1}, "invalid_number")):
        with pytest.raises(PayloadRejected) as err:
            check_metadata(bad, limits)
        assert err.value.code == code
    assert id_problem("photo 1?#%.jpg") is None and id_problem("é") is None
    for bad in ("", ".", "..", "a/b", "a\\b", "x\ny", "\x7f", "\ud800", "x" * 513, 5):
        assert id_problem(bad) is not None
    assert path_id("2024/trip/a.png") == "2024:trip:a.png" and id_problem(path_id("a/b/c.png")) is None


def test_stats_show_a_checkpoint_file_by_name_only() -> None:
    from service.engine import _without_paths

    assert _without_paths({"name": "ViT-B-32", "pretrained": "/srv/weights/clip.safetensors"})["pretrained"] == \
        "clip.safetensors"
    assert _without_paths({"pretrained": "laion2b_s34b_b79k"})["pretrained"] == "laion2b_s34b_b79k"


def test_filter_keys_become_valid_qdrant_paths() -> None:
    from indexer.stores.base import json_path, normalise_filter

    assert json_path("album") == "album" and json_path("tags[]") == "tags[]"
    assert json_path("a b") == '"a b"' and json_path("metadata.x+y") == 'metadata."x+y"'
    assert normalise_filter({"my key": 1, "kind": "image"}) == [('metadata."my key"', [1]), ("kind", ["image"])]
    for bad in ("..", "a.", ".a", 'q"q', "a\\b", "tab\t"):
        with pytest.raises(ValueError, match="filter key"):
            normalise_filter({bad: 1})
