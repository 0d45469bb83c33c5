from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from indexer.pipeline import TextItem
from indexer.stores import IMAGES, TEXTS

from ...errors import ApiError
from ...schemas import ErrorResponse, ImageOut, TextOut, TextsIn, UploadResponse
from ..deps import EngineDep, JsonBody, Read, Write

router = APIRouter(prefix="/v1", tags=["items"], responses={c: {"model": ErrorResponse} for c in (401, 404, 413,
                                                                                                415, 422, 503)})


@router.post("/images", response_model=UploadResponse, dependencies=[Write], summary="Upload and index images",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["files"], "properties": {
                     "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                     "metadata": {"type": "string", "description": "JSON object: filename → metadata object"},
                     "ids": {"type": "array", "items": {"type": "string"},
                             "description": "ids in file order (or one JSON array)"}}}}}}})
async def upload_images(request: Request, engine: EngineDep) -> dict[str, Any]:
    """One entry per file: its id, or why it was rejected; a bad file never fails the others.
    Re-sending an existing id replaces that item."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise ApiError(415, "upload images as multipart/form-data (field 'files')", "unsupported_media_type")
    s = engine.settings
    form = await request.form(max_files=s.max_files + 1, max_fields=s.max_files * 2 + 10)
    uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
    if not uploads:
        raise ApiError(422, "multipart field 'files' holds no file", "invalid_request")
    if len(uploads) > s.max_files:
        raise ApiError(413, f"{len(uploads)} files in one request; the limit is {s.max_files}", "too_many_files")
    raw_ids = [str(v) for v in form.getlist("ids")]
    try:
        ids: list[Any] = json.loads(raw_ids[0]) if len(raw_ids) == 1 and raw_ids[0].startswith("[") else raw_ids
        meta = json.loads(str(form.get("metadata") or "{}"))
    except ValueError as exc:
        raise ApiError(422, f"'ids' or 'metadata' is not valid JSON: {exc}", "invalid_request") from exc
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise ApiError(422, "'metadata' must be a JSON object mapping file names to objects", "invalid_request")
    if ids and len(ids) != len(uploads):
        raise ApiError(422, f"{len(ids)} ids for {len(uploads)} files", "invalid_request")
    if any(not isinstance(i, str) or not i or len(i) > 512 for i in ids):
        raise ApiError(422, "ids must be non-empty strings of at most 512 characters", "invalid_request")
    if len(set(ids)) != len(ids):
        raise ApiError(422, "duplicate ids in one request", "invalid_request")
    files = [(u.filename or f"file{k}", u.content_type, await u.read(s.max_image_bytes + 1))
             for k, u in enumerate(uploads)]
    results = await asyncio.to_thread(engine.add_images, files, ids or [None] * len(files), meta)
    ok = sum(1 for r in results if r["error"] is None)
    return {"items": results, "indexed": ok, "failed": len(results) - ok}


@router.post("/texts", response_model=UploadResponse, dependencies=[Write, JsonBody], summary="Index captions")
async def add_texts(body: TextsIn, engine: EngineDep) -> dict[str, Any]:
    s = engine.settings
    if len(body.items) > s.max_texts_per_request:
        raise ApiError(413, f"{len(body.items)} texts in one request; the limit is {s.max_texts_per_request}",
                       "too_many_items")
    ids = [i.id for i in body.items if i.id]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "duplicate ids in one request", "invalid_request")
    items = [TextItem(i.text, id=i.id, metadata=i.metadata, image_id=i.image_id) for i in body.items]
    results = await asyncio.to_thread(engine.add_texts, items)
    ok = sum(1 for r in results if r["error"] is None)
    return {"items": results, "indexed": ok, "failed": len(results) - ok}


@router.get("/images/{item_id}", response_model=ImageOut, dependencies=[Read])
async def get_image(item_id: str, engine: EngineDep) -> dict[str, Any]:
    return await asyncio.to_thread(engine.get, IMAGES, item_id)


@router.get("/images/{item_id}/content", dependencies=[Read], response_class=FileResponse,
            responses={200: {"content": {"image/*": {}}}})
async def get_image_content(item_id: str, engine: EngineDep) -> FileResponse:
    path, media = await asyncio.to_thread(engine.content, item_id)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                         "X-Content-Type-Options": "nosniff"})


@router.delete("/images/{item_id}", status_code=204, dependencies=[Write])
async def delete_image(item_id: str, engine: EngineDep) -> Response:
    await asyncio.to_thread(engine.delete, IMAGES, item_id)
    return Response(status_code=204)


@router.get("/texts/{item_id}", response_model=TextOut, dependencies=[Read])
async def get_text(item_id: str, engine: EngineDep) -> dict[str, Any]:
    return await asyncio.to_thread(engine.get, TEXTS, item_id)


@router.delete("/texts/{item_id}", status_code=204, dependencies=[Write])
async def delete_text(item_id: str, engine: EngineDep) -> Response:
    await asyncio.to_thread(engine.delete, TEXTS, item_id)
    return Response(status_code=204)
