"""What the service refuses, in its own terms: the engine, the jobs and the validators raise these.

They say what went wrong (not found, conflict, too large, ...) and never how HTTP spells it: the one mapping
to status codes is `service/errors.py`, so the engine can be driven from the CLI, a test or another transport
and still mean the same thing. `code` is the machine-readable reason clients branch on (`invalid_id`,
`features_stale`, ...); each class has a default.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code


class InvalidRequest(ServiceError):
    """The request is well-formed but asks for something impossible (bad ids, options out of bounds)."""

    code = "invalid_request"


class BadInput(ServiceError):
    """The payload itself is unusable: a corrupt or undecodable image."""

    code = "bad_request"


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    """The request is fine but the stored state disagrees (features prepared by another matcher)."""

    code = "conflict"


class TooLarge(ServiceError):
    """Over a configured limit (bytes, pixels, counts): the message names the setting."""

    code = "too_large"


class UnsupportedMedia(ServiceError):
    code = "unsupported_media_type"


class Unavailable(ServiceError):
    """The server is fine but cannot serve this now (still loading, out of device memory)."""

    code = "not_ready"
