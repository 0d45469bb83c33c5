from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from ...engine import SearchOptions
from ...errors import ApiError
from ...schemas import ErrorResponse, ImageIdSearch, SearchParams, SearchResponse, TextSearch
from ...validation import FILTER_RULES, strict_loads, valid_filter
from ..deps import EngineDep, JsonBody, Read

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[Read],
                   responses={c: {"model": ErrorResponse} for c in (400, 401, 409, 413, 415, 422, 503)})


def _options(p: SearchParams) -> SearchOptions:
    return SearchOptions(p.limit, p.candidates, p.rerank, p.min_score, p.offset, p.filter, p.explain)


@router.post("/images", response_model=SearchResponse, dependencies=[JsonBody],
             summary="Text → images: global recall in Qdrant, then the fine-grained rerank")
async def search_images(body: TextSearch, engine: EngineDep) -> dict[str, Any]:
    valid_filter(body.filter, engine.settings)
    out = await engine.search_images(body.text, _options(body))
    return {"results": out.results, "timing_ms": out.timing_ms, "model": engine.bundle.id,
            "scores": "raw" if engine.calibration is None else "probability"}


_FORM_FIELDS = {"limit": int, "candidates": int, "offset": int, "min_score": float}


@router.post("/texts", response_model=SearchResponse, summary="Image → texts",
             openapi_extra={"requestBody": {"content": {
                 "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                     "image": {"type": "string", "format": "binary"}, "limit": {"type": "integer"},
                     "candidates": {"type": "integer"}, "rerank": {"type": "boolean"},
                     "explain": {"type": "boolean"},
                     "min_score": {"type": "number"}, "offset": {"type": "integer"},
                     "filter": {"type": "string", "description": "JSON object"}}}},
                 "application/json": {
                     "schema": ImageIdSearch.model_json_schema(ref_template="#/components/schemas/{model}")},
             }, "required": True}})
async def search_texts(request: Request, engine: EngineDep) -> dict[str, Any]:
    """Query with an uploaded image (multipart field `image` plus the options as form fields)
    or with an indexed image (JSON `{"image_id": ...}`)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = ImageIdSearch.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ApiError(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]),
                           "invalid_request") from exc
        valid_filter(body.filter, engine.settings)
        out = await engine.search_texts(_options(body), image_id=body.image_id)
    elif ctype == "multipart/form-data":
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
        data = await upload.read(limit + 1)
        out = await engine.search_texts(_options(params), image=data)
    else:
        raise ApiError(415, "send multipart/form-data with an 'image' file, or JSON with an 'image_id'",
                       "unsupported_media_type")
    return {"results": out.results, "timing_ms": out.timing_ms, "model": engine.bundle.id,
            "scores": "raw" if engine.calibration is None else "probability"}
