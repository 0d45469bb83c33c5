"""The web page in a real browser: Debian's headless Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from training.datasets import CaptionedImage
from training.synth import COLOURS

from .conftest import Server
from .helpers import browser_page

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator[object]:
    with browser_page(server.url) as pg:
        yield pg


def _order(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all("#image-results li", "els => els.map(e => e.dataset.id)")


def test_text_query_rerank_toggle_and_image_query(page, synth: tuple[Path, list[CaptionedImage]]) -> None:  # type: ignore[no-untyped-def]
    root, items = synth
    page.wait_for_function("document.getElementById('stats').textContent.includes('images')")
    assert page.is_visible("#model-notice")  # the demo model says what it is
    assert "synthetic" in page.inner_text("#model-notice")
    hard = [it for it in items if it.metadata.get("meta_hard_case")]
    assert hard, "the synthetic split has hard cases"
    changed = False
    for it in hard[:6]:
        page.fill("#query", it.captions[0])
        if not page.is_checked("#rerank"):
            page.check("#rerank")
        page.click("#text-form button")
        page.wait_for_function("document.getElementById('image-results').dataset.state === 'reranked' && "
                               "document.getElementById('t2i-status').textContent.includes('results in')")
        reranked = _order(page)
        assert len(reranked) == 12
        page.uncheck("#rerank")  # toggling re-runs the query
        page.wait_for_function("document.getElementById('image-results').dataset.state === 'global'")
        global_only = _order(page)
        assert sorted(global_only) != [] and len(global_only) == 12
        if reranked != global_only:
            changed = True
            break
    assert changed, "rerank on/off never changed the order on a hard case"
    assert "fine –" in page.inner_text("#image-results li")  # global ranking shows no fine score
    page.check("#rerank")
    page.wait_for_function("document.getElementById('image-results').dataset.state === 'reranked'")

    page.set_input_files("#image-file", str(root / "images" / items[2].filename))
    page.wait_for_function("document.querySelectorAll('#text-results li').length > 0")
    captions = page.eval_on_selector_all("#text-results li", "els => els.map(e => e.textContent)")
    # a calibrated model's scores read "match NN% · global NN% · fine NN%", an uncalibrated one's "score …"
    assert len(captions) == 10 and all(("match" in c and "fine" in c) or "score" in c for c in captions)
    assert "captions for" in page.inner_text("#i2t-status")
    assert "probability" in page.inner_text("#score-legend")  # the demo model is calibrated

    (REPO / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(REPO / "docs" / "web-page.png"), full_page=True)


def test_explain_shows_each_words_map(page, synth: tuple[Path, list[CaptionedImage]]) -> None:  # type: ignore[no-untyped-def]
    root, items = synth
    text = items[4].captions[0]
    page.fill("#query", text)
    page.check("#explain")  # re-runs the query, now explained
    # wait for this query's explanations (not a previous query's): every chip is a piece of this caption
    page.wait_for_function("""(text) => { const li = document.querySelector('#image-results li');
        const chips = li ? [...li.querySelectorAll('.chip')].map(c => c.textContent).slice(1) : [];
        return chips.length > 0 && chips.every(c => text.toLowerCase().includes(c)); }""", arg=text)
    first = page.locator("#image-results li").first
    chips = first.locator(".chip").all_inner_texts()
    assert chips[0] == "all" and chips[1:] and all(c.lower() in text.lower() for c in chips[1:])
    colours = [c for c in chips[1:] if c in COLOURS]
    word = colours[0] if colours else chips[1]
    first.get_by_role("button", name=word, exact=True).first.hover()
    page.wait_for_function(f"document.querySelector('#image-results li .thumb').dataset.word === {word!r}")
    # the overlay holds the word's map: some of its pixels are painted
    painted = page.evaluate("""() => { const c = document.querySelector('#image-results li canvas.heat');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return [n, c.width * c.height]; }""")
    assert 0 < painted[0] <= painted[1]
    # the map switch redraws the shown word with the other map (eq. 9's attention instead of eq. 7's)
    alpha = """() => { const c = document.querySelector('#image-results li canvas.heat');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return Array.from(d.filter((_, i) => i % 4 === 3)); }"""
    eq7 = page.evaluate(alpha)
    page.select_option("#explain-map", "patches")
    eq9 = page.evaluate(alpha)
    assert eq9 != eq7 and max(eq9) > 0
    page.select_option("#explain-map", "picked_by")
    assert page.evaluate(alpha) == eq7
    # the image → captions panel explains each caption's words over the query image
    page.set_input_files("#image-file", str(root / "images" / items[4].filename))
    page.wait_for_function("document.querySelectorAll('#text-results li .chip').length > 0 && "
                           "!document.getElementById('i2t-query').hidden")
    page.locator("#text-results li").first.locator(".chip").nth(1).hover()
    page.wait_for_function("document.querySelector('#i2t-query .thumb').dataset.word !== 'all'")
    first.get_by_role("button", name=word, exact=True).first.hover()
    page.screenshot(path=str(REPO / "docs" / "web-page-explain.png"), full_page=True)
    page.uncheck("#explain")


def test_image_to_image_search_from_a_card_and_from_an_upload(page, synth: tuple[Path, list[CaptionedImage]]  # type: ignore[no-untyped-def]
                                                              ) -> None:
    root, items = synth
    page.fill("#query", items[3].captions[0])
    page.click("#text-form button")
    page.wait_for_function("document.getElementById('t2i-status').textContent.includes('results in')")
    first = _order(page)[0]
    page.click(f"#image-results li[data-id='{first}'] button.similar")
    page.wait_for_function("document.getElementById('image-results').dataset.state === 'similar'")
    similar = _order(page)
    assert similar and first not in similar  # the query image is not its own neighbour
    assert f"images like {first}" in page.inner_text("#t2i-status")
    assert "similarity" in page.inner_text("#image-results li")

    page.set_input_files("#image-file", str(root / "images" / items[7].filename))
    page.wait_for_selector("#similar-to-query")
    page.click("#similar-to-query")
    page.wait_for_function("document.getElementById('t2i-status').textContent.includes('images like')")
    assert _order(page)[0] == items[7].image_id  # an upload of an indexed photo finds that photo first
    page.screenshot(path=str(REPO / "docs" / "web-page-similar.png"), full_page=True)


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_without_internet(page, server: Server, path: str, rendered: str) -> None:  # type: ignore[no-untyped-def]
    """Swagger UI and ReDoc come from the package: with every request off this server refused, both render."""
    refused: list[str] = []

    def local_only(route) -> None:  # type: ignore[no-untyped-def]
        url = route.request.url
        if url.startswith(server.url):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    pg = page.context.browser.new_page()
    try:
        pg.route("**/*", local_only)
        pg.goto(server.url + path)
        pg.wait_for_selector(rendered, timeout=30_000)
        assert "search" in pg.inner_text("body").lower()
    finally:
        pg.close()
    # ReDoc's bundle links its own "powered by" logo from its CDN; without it the docs are complete
    assert [u for u in refused if not u.endswith("cdn.redoc.ly/redoc/logo-mini.svg")] == []


def test_upload_form_and_errors(page, server: Server) -> None:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    page.set_input_files("#upload-files", [{"name": "red.png", "mimeType": "image/png", "buffer": buf.getvalue()},
                                           {"name": "junk.png", "mimeType": "image/png", "buffer": b"junk"}])
    page.click("#upload-form button")
    page.wait_for_function("document.querySelectorAll('#upload-results li').length === 2")
    lines = page.eval_on_selector_all("#upload-results li", "els => els.map(e => e.textContent)")
    assert lines[0].startswith("red.png → ") and "not a recognised image" in lines[1]
    uploaded = lines[0].split(" → ")[1]
    with server.client() as c:
        assert c.delete(f"/v1/images/{uploaded}").status_code == 204
    page.fill("#filter", "broken")
    page.fill("#query", "a red circle")
    page.click("#text-form button")
    page.wait_for_function("document.getElementById('t2i-status').textContent.includes('not key=value')")
    page.fill("#filter", "")
