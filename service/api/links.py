"""The URLs of the API, built here and only here: the engine speaks in ids, the routes in links."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote


def content_url(image_id: str) -> str:
    """Where GET returns an image's original bytes. Ids may hold '?', '#', '%' or spaces: one encoded segment."""
    return f"/v1/images/{quote(image_id, safe='')}/content"


def linked(image: dict[str, Any]) -> dict[str, Any]:
    """An image as the engine describes it, with its links: `uri` is the http(s) URL it was indexed from, else
    its content URL (a path on the server's disk is nobody else's business)."""
    url = content_url(image["id"])
    return image | {"uri": image.get("uri") or url, "content_url": url}
