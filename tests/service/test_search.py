from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from training.datasets import CaptionedImage

from .conftest import Server


@pytest.fixture(scope="module", params=["embedded", "qdrant-features"])
def server(request: pytest.FixtureRequest, server: Server) -> Iterator[Server]:
    """Every search test twice: the embedded engine with its token bank, and server mode with the prepared
    features on the Qdrant points (read in the same call as the candidates)."""
    yield server if request.param == "embedded" else request.getfixturevalue("qdrant_server")


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def _search(client: httpx.Client, **body: object) -> dict:
    r = client.post("/v1/search/images", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_operations_endpoints(client: httpx.Client, server: Server) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == server.engine.bundle.id
    stats = client.get("/v1/stats").json()
    assert stats["counts"]["images"] >= 60 and stats["counts"]["texts"] >= 300
    assert stats["backbone"]["fingerprint"] == server.engine.backbone.fingerprint
    assert stats["device"] == "cpu"
    assert stats["store"]["backend"] == ("qdrant-server" if server.engine.store.holds_features else "qdrant-edge")
    metrics = client.get("/metrics").text
    assert "finesearch_request_seconds" in metrics and "finesearch_index_items" in metrics
    assert client.get("/openapi.json").json()["info"]["title"] == "finesearch"
    assert client.get("/docs").status_code == 200


def test_text_to_image_finds_the_described_image_first(client: httpx.Client,
                                                       synth: tuple[Path, list[CaptionedImage]]) -> None:
    _, items = synth
    # an easy case: the full caption of an image that has no colour/position twin in this index
    twins = {str(it.metadata.get("meta_twin_of")) for it in items} | {
        it.image_id for it in items if it.metadata.get("meta_twin_of") is not None}
    easy = [it for it in items if it.image_id not in twins][:5]
    hits = 0
    for it in easy:
        res = _search(client, text=it.captions[0], limit=5)
        assert len(res["results"]) == 5
        hits += res["results"][0]["id"] == it.image_id
    assert hits >= 4, f"ground truth first for only {hits} of {len(easy)} easy queries"


def test_rerank_on_and_off(client: httpx.Client, synth: tuple[Path, list[CaptionedImage]]) -> None:
    text = synth[1][0].captions[0]
    on = _search(client, text=text, limit=10, candidates=30)
    off = _search(client, text=text, limit=10, rerank=False)
    assert all(r["fine_score"] is not None for r in on["results"])
    assert all(r["fine_score"] is None for r in off["results"])
    assert all(r["score"] == r["global_score"] for r in off["results"])
    assert [r["rank"] for r in on["results"]] == list(range(1, 11))
    scores = [r["score"] for r in on["results"]]
    assert scores == sorted(scores, reverse=True)
    t = on["timing_ms"]
    assert set(t) == {"encode", "recall", "gather", "rerank", "explain", "total"} and t["rerank"] > 0
    assert t["explain"] is None and all(r["explanation"] is None for r in on["results"])  # only when asked
    assert off["timing_ms"]["rerank"] == 0
    assert on["model"] and on["results"][0]["content_url"].endswith("/content")


def test_paging_min_score_and_filters(client: httpx.Client, synth: tuple[Path, list[CaptionedImage]]) -> None:
    text = synth[1][3].captions[1]
    full = _search(client, text=text, limit=10, candidates=40)["results"]
    page2 = _search(client, text=text, limit=5, offset=5, candidates=40)["results"]
    assert [r["id"] for r in page2] == [r["id"] for r in full[5:10]]
    assert [r["rank"] for r in page2] == [6, 7, 8, 9, 10]
    cut = full[3]["score"] - 1e-6  # scores are rounded to 6 decimals in responses
    kept = _search(client, text=text, limit=10, candidates=40, min_score=cut)["results"]
    assert [r["id"] for r in kept] == [r["id"] for r in full[:4]]
    rows = _search(client, text=text, limit=20, filter={"layout": "column"})["results"]
    assert rows and all(r["metadata"]["layout"] == "column" for r in rows)
    some = _search(client, text=text, limit=20, filter={"n": [int(x["id"]) for x in full[:3]]})["results"]
    assert {r["id"] for r in some} == {x["id"] for x in full[:3]}


def test_image_to_text_by_upload_and_by_id(client: httpx.Client, synth: tuple[Path, list[CaptionedImage]]) -> None:
    root, items = synth
    hits = 0
    for it in items[:5]:
        data = (root / "images" / it.filename).read_bytes()
        r = client.post("/v1/search/texts", files={"image": ("q.png", data, "image/png")},
                        data={"limit": "5", "candidates": "50"})
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert res[0]["text"] and res[0]["fine_score"] is not None
        hits += res[0]["image_id"] == it.image_id
        by_id = client.post("/v1/search/texts", json={"image_id": it.image_id, "limit": 5, "candidates": 50})
        assert by_id.status_code == 200
        assert [x["id"] for x in by_id.json()["results"]] == [x["id"] for x in res]
    assert hits >= 4, f"a caption of the query image came first for only {hits} of 5"
    off = client.post("/v1/search/texts", json={"image_id": items[0].image_id, "rerank": False}).json()
    assert all(x["fine_score"] is None for x in off["results"])


def test_image_to_image_search_by_indexed_id_and_by_upload(client: httpx.Client,
                                                           synth: tuple[Path, list[CaptionedImage]]) -> None:
    root, items = synth
    query = items[5]
    by_id = client.post("/v1/search/images", json={"image_id": query.image_id, "limit": 5})
    assert by_id.status_code == 200, by_id.text
    body = by_id.json()
    assert body["scores"] == "raw"
    ids = [r["id"] for r in body["results"]]
    assert len(ids) == 5 and query.image_id not in ids  # the query image is left out of its own answer
    assert all(r["fine_score"] is None and r["score"] == r["cosine"] for r in body["results"])
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)

    data = (root / "images" / query.filename).read_bytes()
    up = client.post("/v1/search/images", files={"image": ("q.png", data, "image/png")}, data={"limit": "6"})
    assert up.status_code == 200, up.text
    got = up.json()["results"]
    assert got[0]["id"] == query.image_id and got[0]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert [r["id"] for r in got[1:]] == ids  # the same neighbours, whichever way the query came

    layout = query.metadata.get("meta_layout")
    filtered = client.post("/v1/search/images", json={"image_id": query.image_id, "limit": 50,
                                                      "filter": {"layout": layout}}).json()["results"]
    assert filtered and all(r["metadata"]["layout"] == layout for r in filtered)
    paged = client.post("/v1/search/images", json={"image_id": query.image_id, "limit": 2, "offset": 3}).json()
    assert [r["id"] for r in paged["results"]] == ids[3:5] and paged["results"][0]["rank"] == 4


def test_image_to_image_search_errors(client: httpx.Client) -> None:
    both = client.post("/v1/search/images", json={"text": "a red circle", "image_id": "0"})
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    missing = client.post("/v1/search/images", json={"image_id": "no-such-image"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    odd = client.post("/v1/search/images", json={"image_id": "a/b"})
    assert odd.status_code == 422 and odd.json()["error"]["code"] == "invalid_id"
    junk = client.post("/v1/search/images", files={"image": ("q.png", b"not an image", "image/png")})
    assert junk.status_code in (400, 415, 422) and "image" in junk.json()["error"]["message"]
    plain = client.post("/v1/search/images", content=b"a red circle", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "'image_id'" in plain.json()["error"]["message"]


def test_concurrent_mixed_searches_answer_as_they_do_alone(server: Server, monkeypatch: pytest.MonkeyPatch,
                                                           synth: tuple[Path, list[CaptionedImage]]) -> None:
    """Requests that share a micro-batch may differ: some rerank (their encoding call prepares them for the
    matcher), some do not, an indexed image as the query is prepared by the rerank call itself. Fired
    together, each must get the answer it gets alone, and the model calls must really have been shared."""
    root, items = synth
    png = (root / "images" / items[2].filename).read_bytes()
    requests: list[tuple[str, dict, bool]] = []
    for k, it in enumerate(items[:6]):
        requests.append(("/v1/search/images", {"text": it.captions[k % len(it.captions)], "limit": 5,
                                               "candidates": 40, "rerank": k % 2 == 0}, False))
        requests.append(("/v1/search/texts", {"image_id": it.image_id, "limit": 5, "rerank": k % 2 == 1}, False))
        requests.append(("/v1/search/texts", {"limit": "5", "rerank": str(k % 2 == 0).lower()}, True))

    def answer(req: tuple[str, dict, bool]) -> list[tuple[str, float, float | None]]:
        path, body, upload = req
        with server.client() as c:
            r = (c.post(path, files={"image": ("q.png", png, "image/png")}, data=body) if upload
                 else c.post(path, json=body))
        assert r.status_code == 200, r.text
        return [(x["id"], x["score"], x["fine_score"]) for x in r.json()["results"]]

    alone = [answer(r) for r in requests]
    sizes: dict[str, list[int]] = {}
    for name in ("text_encoder", "image_encoder", "reranker"):
        batcher = getattr(server.engine, name)

        def counted(items: list, fn: Callable = batcher.fn, name: str = name) -> list:
            sizes.setdefault(name, []).append(len(items))
            return fn(items)

        monkeypatch.setattr(batcher, "fn", counted)
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(answer, requests))
    monkeypatch.undo()
    for a, b in zip(alone, together, strict=True):
        assert [x[0] for x in a] == [x[0] for x in b]
        assert all(abs(x[1] - y[1]) < 1e-5 for x, y in zip(a, b, strict=True))
        assert all((x[2] is None) == (y[2] is None) for x, y in zip(a, b, strict=True))
    assert max(sizes["text_encoder"] + sizes["image_encoder"] + sizes["reranker"]) > 1, sizes
