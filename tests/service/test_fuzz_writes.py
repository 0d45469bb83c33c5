"""Property-based fuzzing of every write route with hostile payloads: deep nesting, NaN and Infinity, lone
surrogates, huge integers, odd ids. Whatever comes in: no 5xx, and nothing stored half-way (a refused
request changes nothing; an accepted one adds exactly what it reports; points always equal live bank rows).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from indexer.stores import IMAGES
from service.config import Settings

from .conftest import Server, start_server
from .helpers import png, state, tar, wait_job

FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# text with lone surrogates, control characters, '/', '.', and ordinary letters
text = st.one_of(st.text(st.characters(categories=("L", "N", "P", "S", "Zs", "Cc")), max_size=12),
                st.text(st.characters(categories=("Cs", "Cc")), min_size=1, max_size=3),
                st.sampled_from(["\ud800", "a\udfffb", "\x00", "\u202e", "a/b", "..", "é", "\U0001d518"]))
ids = st.one_of(text, st.sampled_from(["a/b", "..", ".", "x\\y", "ok-id", "é ?#%", "\x00", "a" * 600]),
                st.integers(-5, 5), st.none())
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=True, allow_infinity=True),
                st.sampled_from([float("nan"), float("-inf"), 2**63, -(2**63) - 1, 2**63 - 1, 10**400]), text)
values = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(text, kids, max_size=3),
                      max_leaves=12)


def _nest(value: Any, levels: int, as_list: bool) -> Any:
    for _ in range(levels):
        value = [value] if as_list else {"k": value}
    return value


deep = st.builds(_nest, values, st.integers(0, 140), st.booleans())
metadata = st.one_of(st.dictionaries(text, st.one_of(values, deep), max_size=4), deep, values)


def dumps(value: Any) -> bytes:
    """JSON as a hostile client writes it: NaN/Infinity tokens, surrogates as \\u escapes."""
    return json.dumps(value, allow_nan=True).encode()


@pytest.fixture(scope="module")
def fuzz_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(Settings(model=model_dir, data_dir=tmp_path_factory.mktemp("fuzz"), max_files=4,
                                max_image_bytes=1_000_000, max_text_chars=200, max_archive_bytes=2_000_000,
                                max_archive_files=20))
    with srv.client() as c:
        c.post("/v1/texts", json={"items": [{"id": "base", "text": "a red circle"}]})
        c.post("/v1/images", files=[("files", ("base.png", png(), "image/png"))], data={"ids": "base"})
    yield srv
    srv.stop()


def _check_and_undo(c: httpx.Client, r: httpx.Response, before: dict[str, int], collection: str) -> None:
    event(f"status {r.status_code}" + (f" {r.json()['error']['code']}" if r.status_code != 200 else ""))
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert r.json()["error"]["code"] and state(c) == before
        return
    body = r.json()
    assert body["indexed"] + body["failed"] + body["duplicates"] == len(body["items"])
    assert state(c) == {**before, collection: before[collection] + body["indexed"]}
    for item in body["items"]:
        if item["error"] is None and item["duplicate_of"] is None:
            assert c.delete(f"/v1/{collection}/{quote(item['id'], safe='')}").status_code == 204
    assert state(c) == before


@FUZZ
@given(items=st.lists(st.fixed_dictionaries({"text": text | st.just("a blue square")},
                                            optional={"id": ids, "metadata": metadata, "image_id": ids}),
                      min_size=1, max_size=3),
       raw=st.one_of(st.just(None), st.just(None), st.just(None), st.binary(max_size=40)))
def test_fuzz_texts(fuzz_server: Server, items: list[dict[str, Any]], raw: bytes | None) -> None:
    tag = uuid.uuid4().hex[:8]
    for it in items:  # fresh ids where the id is a plain string, so an accepted item is a new point
        if isinstance(it.get("id"), str) and it["id"]:
            it["id"] = f"{tag}-{it['id']}"
        it["text"] = f"{it['text']} {tag}"
    body = raw if raw is not None else dumps({"items": items})
    with fuzz_server.client() as c:
        before = state(c)
        r = c.post("/v1/texts", content=body, headers={"content-type": "application/json"})
        _check_and_undo(c, r, before, "texts")


@FUZZ
@given(meta=st.one_of(metadata.map(lambda m: dumps({"a.png": m})), text.map(str), st.just("{}")),
       id_list=st.lists(ids, min_size=1, max_size=2), ids_as_json=st.booleans(), junk=st.booleans())
def test_fuzz_image_uploads(fuzz_server: Server, meta: bytes | str, id_list: list[Any], ids_as_json: bool,
                            junk: bool) -> None:
    tag = uuid.uuid4().hex[:8]
    id_list = [f"{tag}-{i}" if isinstance(i, str) and i else i for i in id_list]
    files = [("files", ("a.png", png(colour=(int(tag[:2], 16), 40, 40)), "image/png"))]
    if len(id_list) == 2:
        files.append(("files", ("b.png", b"junk" if junk else png(colour=(1, int(tag[2:4], 16), 1)), "image/png")))
    raw = (lambda v: v.encode("utf-8", "surrogatepass"))  # noqa: E731 - a form carries bytes, surrogates too
    data: dict[str, Any] = {"metadata": raw(meta) if isinstance(meta, str) else meta}
    data["ids"] = dumps(id_list) if ids_as_json else [raw(str(i)) for i in id_list]
    with fuzz_server.client() as c:
        before = state(c)
        r = c.post("/v1/images", files=files, data=data)
        _check_and_undo(c, r, before, "images")


@settings(FUZZ, max_examples=12)
@given(rows=st.lists(st.fixed_dictionaries({"file": st.just("p/a.png")}, optional={"id": ids, "metadata": metadata}),
                     max_size=2),
       captions=st.lists(st.fixed_dictionaries({"image": st.just("p/a.png") | ids,
                                                "caption": text | st.just("a green triangle")},
                                               optional={"id": ids, "metadata": metadata}), max_size=2),
       raw_line=st.one_of(st.none(), st.binary(max_size=30)))
def test_fuzz_bulk_jobs(fuzz_server: Server, rows: list[dict[str, Any]], captions: list[dict[str, Any]],
                        raw_line: bytes | None) -> None:
    tag = uuid.uuid4().hex[:8]
    lines = [dumps(r) for r in rows] + ([raw_line.replace(b"\n", b" ")] if raw_line else [])
    entries = {"p/a.png": png(colour=(int(tag[:2], 16), int(tag[2:4], 16), 7)),
               "metadata.jsonl": b"\n".join(lines), "captions.jsonl": b"\n".join(dumps(r) for r in captions)}
    with fuzz_server.client() as c:
        before = state(c)
        r = c.post("/v1/jobs/index", files={"archive": ("f.tar", tar(entries))})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"])
        event(f"indexed {job['indexed_images']} image(s), {job['indexed_texts']} caption(s)")
        assert job["state"] == "succeeded", job
        assert job["done"] == job["total"] <= 1 + len(captions)
        assert state(c) == {"images": before["images"] + job["indexed_images"],
                            "texts": before["texts"] + job["indexed_texts"]}
        for coll in ("images", "texts"):  # undo: every item this job wrote carries its id
            written = [p["item_id"] for p in fuzz_server.engine.store.scroll(coll) if p.get("job") == job["id"]]
            for item_id in written:
                assert c.delete(f"/v1/{coll}/{quote(item_id, safe='')}").status_code == 204
        assert state(c) == before


@FUZZ
@given(item_id=text.filter(bool), collection=st.sampled_from(["images", "texts"]),
       filt=st.one_of(st.none(), st.dictionaries(text, values, max_size=3), deep), query=text)
def test_fuzz_deletes_and_searches(fuzz_server: Server, item_id: str, collection: str, filt: Any, query: str) -> None:
    with fuzz_server.client() as c:
        before = state(c)
        path = "/v1/" + collection + "/fuzz-" + quote(item_id.encode("utf-8", "surrogatepass"), safe="")
        assert c.delete(path).status_code in (404, 405)
        body = dumps({"text": query or "x", "filter": filt, "candidates": 20})
        r = c.post("/v1/search/images", content=body, headers={"content-type": "application/json"})
        assert r.status_code < 500, r.text
        r = c.post("/v1/search/texts", files={"image": ("q.png", png())}, data={"filter": dumps(filt).decode()})
        assert r.status_code < 500, r.text
        assert state(c) == before
    assert fuzz_server.engine.store.count(IMAGES) == before["images"]
