from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from ...errors import ApiError
from ...schemas import ErrorResponse, JobList, JobOut
from ..deps import EngineDep, JobsDep, Read, Write, media_type

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses={c: {"model": ErrorResponse} for c in (401, 404, 413,
                                                                                                    415, 422, 503)})


@router.post("/index", response_model=JobOut, status_code=202, dependencies=[Write],
             summary="Bulk index a tar or zip archive in the background",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["archive"],
                 "properties": {"archive": {"type": "string", "format": "binary"}}}}}}})
async def create_job(request: Request, engine: EngineDep, jobs: JobsDep) -> dict[str, Any]:
    """Images anywhere in the archive; optional `metadata.jsonl` ({"file", "id"?, "metadata"}) and
    `captions.jsonl` ({"image", "caption"}) files. Poll `GET /v1/jobs/{id}` for progress."""
    ctype = media_type(request)
    if ctype != "multipart/form-data":
        raise ApiError(415, "upload the archive as multipart/form-data (field 'archive')", "unsupported_media_type")
    form = await request.form(max_files=1, max_fields=5)
    upload = form.get("archive")
    if upload is None or isinstance(upload, str):
        raise ApiError(422, "multipart field 'archive' (a file) is required", "invalid_request")
    job_id, path = jobs.new_upload_path()
    limit = engine.settings.max_archive_bytes
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"archive is larger than the limit of {limit} bytes (max_archive_bytes)",
                                   "too_large")
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        jobs.discard(job_id)
        raise
    return jobs.submit(job_id, upload.filename)


@router.get("", response_model=JobList, dependencies=[Read])
async def list_jobs(jobs: JobsDep) -> dict[str, Any]:
    return {"jobs": await asyncio.to_thread(jobs.list)}


@router.get("/{job_id}", response_model=JobOut, dependencies=[Read])
async def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    job = await asyncio.to_thread(jobs.get, job_id)
    if job is None:
        raise ApiError(404, f"no job {job_id!r}", "not_found")
    return job
