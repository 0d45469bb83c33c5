from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from indexer.items import TextItem
from indexer.stores import IMAGES, TEXTS

from ...errors import ApiError
from ...schemas import ErrorResponse, ImageOut, TextOut, TextsIn, UploadResponse
from ...validation import strict_loads, valid_id, valid_metadata
from ..deps import EngineDep, JsonBody, Read, Write, media_type
from ..links import linked

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
    ctype = media_type(request)
    if ctype != "multipart/form-data":
        raise ApiError(415, "upload images as multipart/form-data (field 'files')", "unsupported_media_type")
    s = engine.settings
    form = await request.form(max_files=s.max_files + 1, max_fields=s.max_files * 2 + 10)
    uploads = [f for f in form.getlist("files") if not isinstance(f, str)]
    if not uploads:
        raise ApiError(422, "multipart field 'files' holds no file", "invalid_request")
    if len(uploads) > s.max_files:
        raise ApiError(413, f"{len(uploads)} files in one request; the limit is {s.max_files} (max_files)",
                       "too_many_files")
    raw_ids = [str(v) for v in form.getlist("ids")]
    ids: list[Any] = (strict_loads(raw_ids[0].encode(), s, what="'ids'")
                      if len(raw_ids) == 1 and raw_ids[0].startswith("[") else raw_ids)
    meta = strict_loads(str(form.get("metadata") or "{}").encode(), s, what="'metadata'")
    if not isinstance(ids, list):
        raise ApiError(422, "'ids' must be a JSON array of strings, or the field repeated", "invalid_request")
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise ApiError(422, "'metadata' must be a JSON object mapping file names to objects", "invalid_request")
    for name, m in meta.items():
        valid_metadata(m, s, f"metadata[{name!r}]")
    if ids and len(ids) != len(uploads):
        raise ApiError(422, f"{len(ids)} ids for {len(uploads)} files", "invalid_request")
    for k, i in enumerate(ids):
        valid_id(i, s, f"ids[{k}]")
    if len(set(ids)) != len(ids):
        raise ApiError(422, "duplicate ids in one request", "invalid_request")
    # an oversized file is not read at all; its entry reports the size the client sent (UploadFile.size)
    sizes = [u.size if u.size is not None else 0 for u in uploads]
    files = [(u.filename or f"file{k}", u.content_type,
              await u.read(s.max_image_bytes + 1) if sizes[k] <= s.max_image_bytes else b"")
             for k, u in enumerate(uploads)]
    sizes = [size or len(f[2]) for size, f in zip(sizes, files, strict=True)]
    results = await asyncio.to_thread(engine.catalog.add_images, files, ids or [None] * len(files), meta, sizes)
    return _summary(results)


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts that tell the truth: a repeated entry is neither indexed a second time nor failed."""
    failed = sum(1 for r in results if r["error"] is not None)
    dups = sum(1 for r in results if r["error"] is None and r.get("duplicate_of") is not None)
    return {"items": results, "indexed": len(results) - failed - dups, "failed": failed, "duplicates": dups}


@router.post("/texts", response_model=UploadResponse, dependencies=[Write, JsonBody], summary="Index captions")
async def add_texts(body: TextsIn, engine: EngineDep) -> dict[str, Any]:
    s = engine.settings
    if len(body.items) > s.max_texts_per_request:
        raise ApiError(413, f"{len(body.items)} texts in one request; the limit is {s.max_texts_per_request} "
                       "(max_texts_per_request)",
                       "too_many_items")
    for k, i in enumerate(body.items):  # everything checked before anything is written
        if i.id is not None:
            valid_id(i.id, s, f"items[{k}].id")
        if i.image_id is not None:
            valid_id(i.image_id, s, f"items[{k}].image_id")
        valid_metadata(i.metadata, s, f"items[{k}].metadata")
    ids = [i.id for i in body.items if i.id]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "duplicate ids in one request", "invalid_request")
    items = [TextItem(i.text, id=i.id, metadata=i.metadata, image_id=i.image_id) for i in body.items]
    results = await asyncio.to_thread(engine.catalog.add_texts, items)
    return _summary(results)


@router.get("/images/{item_id}", response_model=ImageOut, dependencies=[Read])
async def get_image(item_id: str, engine: EngineDep) -> dict[str, Any]:
    return linked(await asyncio.to_thread(engine.catalog.get, IMAGES, item_id))


@router.get("/images/{item_id}/content", dependencies=[Read], response_class=FileResponse,
            responses={200: {"content": {"image/*": {}}}})
async def get_image_content(item_id: str, engine: EngineDep) -> FileResponse:
    path, media = await asyncio.to_thread(engine.catalog.content, item_id)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                         "X-Content-Type-Options": "nosniff"})


@router.delete("/images/{item_id}", status_code=204, dependencies=[Write])
async def delete_image(item_id: str, engine: EngineDep) -> Response:
    await asyncio.to_thread(engine.catalog.delete, IMAGES, item_id)
    return Response(status_code=204)


@router.get("/texts/{item_id}", response_model=TextOut, dependencies=[Read])
async def get_text(item_id: str, engine: EngineDep) -> dict[str, Any]:
    return await asyncio.to_thread(engine.catalog.get, TEXTS, item_id)


@router.delete("/texts/{item_id}", status_code=204, dependencies=[Write])
async def delete_text(item_id: str, engine: EngineDep) -> Response:
    await asyncio.to_thread(engine.catalog.delete, TEXTS, item_id)
    return Response(status_code=204)
