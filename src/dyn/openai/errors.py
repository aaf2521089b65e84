"""The one exception the OpenAI routes raise to answer with an error body."""

from __future__ import annotations

from dyn.errors import DynError

__all__ = ["ApiError", "RETRY_AFTER_S"]

# Clients (and the openai package's retry loop) honour this on 429 and 503.
RETRY_AFTER_S = "1"


class ApiError(DynError):
    """Answer with ``status`` and an OpenAI error body naming ``param`` and ``code``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
