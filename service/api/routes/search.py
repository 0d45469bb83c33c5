from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ...errors import ApiError
from ...results import SearchOptions
from ...schemas import ErrorResponse, ImageIdSearch, SearchParams, SearchResponse, TextSearch
from ...validation import FILTER_RULES, strict_loads, valid_filter
from ..deps import EngineDep, Read, media_type
from ..links import linked

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Read],
                   responses={c: {"model": ErrorResponse} for c in (400, 401, 409, 413, 415, 422, 503)})


def _options(p: SearchParams) -> SearchOptions:
    return SearchOptions(p.limit, p.candidates, p.rerank, p.min_score, p.offset, p.filter, p.explain)


_FORM_FIELDS = {"limit": int, "candidates": int, "offset": int, "min_score": float}


def _schema(model: type[SearchParams]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def _multipart(described: str) -> dict[str, Any]:
    return {"schema": {"type": "object", "required": ["image"], "description": described, "properties": {
        "image": {"type": "string", "format": "binary"}, "limit": {"type": "integer"},
        "candidates": {"type": "integer"}, "rerank": {"type": "boolean"}, "explain": {"type": "boolean"},
        "min_score": {"type": "number"}, "offset": {"type": "integer"},
        "filter": {"type": "string", "description": "JSON object"}}}}


@router.post("/images", response_model=SearchResponse,
             summary="Text → images (global recall, then the fine-grained rerank), or image → images",
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"anyOf": [_schema(TextSearch), _schema(ImageIdSearch)]}},
                 "multipart/form-data": _multipart("image → images: the uploaded image is the query"),
             }, "required": True}})
async def search_images(request: Request, engine: EngineDep) -> dict[str, Any]:
    """JSON `{"text": ...}` finds the images a caption describes, reranked by the matcher. JSON
    `{"image_id": ...}` or a multipart `image` finds similar images by the global cosine alone (the matcher
    compares words with patches: an image query has no words), scores raw, the query image left out."""
    ctype = media_type(request)
    if ctype == "application/json":
        raw = await request.body()
        doc = strict_loads(raw, engine.settings)
        if isinstance(doc, dict) and "image_id" in doc:
            if "text" in doc:
                raise ApiError(422, "send either 'text' or 'image_id', not both", "invalid_request")
            by_image = _validated(ImageIdSearch, raw)
            valid_filter(by_image.filter, engine.settings)
            out = await engine.search_similar_images(_options(by_image), image_id=by_image.image_id)
            return _response(engine, out, raw_scores=True)
        body = _validated(TextSearch, raw)
        valid_filter(body.filter, engine.settings)
        return _response(engine, await engine.search_images(body.text, _options(body)))
    if ctype == "multipart/form-data":
        params, data = await _image_form(request, engine)
        return _response(engine, await engine.search_similar_images(params, image=data), raw_scores=True)
    raise ApiError(415, "send JSON with a 'text' or an 'image_id', or multipart/form-data with an 'image' file",
                   "unsupported_media_type")


def _validated(model: type[SearchParams], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:  # the same 422 shape as FastAPI's own body validation
        raise RequestValidationError(exc.errors()) from exc


def _response(engine: Any, out: Any, raw_scores: bool = False, images: bool = True) -> dict[str, Any]:
    results = [linked(r) for r in out.results] if images else out.results
    return {"results": results, "timing_ms": out.timing_ms, "model": engine.bundle.id,
            "scores": "raw" if raw_scores or engine.calibration is None else "probability", "notice": engine.notice}


@router.post("/texts", response_model=SearchResponse, summary="Image → texts",
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": _multipart("the uploaded image is the query"),
                 "application/json": {"schema": _schema(ImageIdSearch)},
             }, "required": True}})
async def search_texts(request: Request, engine: EngineDep) -> dict[str, Any]:
    """Query with an uploaded image (multipart field `image` plus the options as form fields)
    or with an indexed image (JSON `{"image_id": ...}`)."""
    ctype = media_type(request)
    if ctype == "application/json":
        body = _validated(ImageIdSearch, await request.body())
        valid_filter(body.filter, engine.settings)
        out = await engine.search_texts(_options(body), image_id=body.image_id)
    elif ctype == "multipart/form-data":
        params, data = await _image_form(request, engine)
        out = await engine.search_texts(params, image=data)
    else:
        raise ApiError(415, "send multipart/form-data with an 'image' file, or JSON with an 'image_id'",
                       "unsupported_media_type")
    return _response(engine, out, images=False)


async def _image_form(request: Request, engine: Any) -> tuple[SearchOptions, bytes]:
    """A multipart image query: the file (size checked before it is read) and the options as form fields."""
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise ApiError(422, "multipart field 'image' (a file) is required", "invalid_request")
    fields: dict[str, Any] = {}
    try:
        for name, kind in _FORM_FIELDS.items():
            if form.get(name) not in (None, ""):
                fields[name] = kind(form[name])
        for flag in ("rerank", "explain"):
            if form.get(flag) not in (None, ""):
                fields[flag] = str(form[flag]).lower() in ("1", "true", "yes", "on")
        if form.get("filter") not in (None, ""):
            fields["filter"] = strict_loads(str(form["filter"]).encode(), engine.settings, FILTER_RULES,
                                            "'filter'")
        params = SearchParams.model_validate(fields)
    except (ValueError, ValidationError) as exc:
        raise ApiError(422, f"invalid search options: {exc}", "invalid_request") from exc
    valid_filter(params.filter, engine.settings)
    limit = engine.settings.max_image_bytes
    if upload.size is not None and upload.size > limit:  # the size sent, not the bytes we would read
        raise ApiError(413, f"image is {upload.size} bytes, above the limit of {limit} (max_image_bytes)",
                       "image_too_large")
    return _options(params), await upload.read(limit + 1)
