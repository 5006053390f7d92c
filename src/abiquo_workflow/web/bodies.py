"""Request bodies read with a size limit: refused as soon as they pass it, never read whole first.

`/callback` and the decision forms are open to anyone who can reach the service, so neither may let a
client make us hold an unbounded body in memory (uvicorn sets no limit of its own).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body passed `limit` bytes; `declared` is its Content-Length when it announced one."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        self.limit, self.declared = limit, declared
        super().__init__(f"body over {limit} bytes")


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or `BodyTooLarge` as soon as its declared or streamed size passes `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit, int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class NotAForm(Exception):
    """The body is not a URL-encoded form (what every form of ours sends)."""


class TooManyFields(Exception):
    """The form has more fields than `max_fields`."""


async def read_form(request: Request, limit: int, max_fields: int) -> dict[str, str]:
    """A small URL-encoded form's fields (the last value of a repeated name wins).

    Raises `BodyTooLarge` past `limit` bytes, `NotAForm` for any other media type (multipart, which our
    forms never send, is refused rather than parsed), `TooManyFields` past `max_fields`. An empty body
    is an empty form.
    """
    body = await read_limited(request, limit)
    if not body.strip():
        return {}
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise NotAForm(media_type)
    try:
        fields = parse_qsl(
            body.decode("utf-8", errors="replace"),
            keep_blank_values=True,
            errors="replace",
            max_num_fields=max_fields,
        )
    except ValueError:
        raise TooManyFields(max_fields) from None
    return dict(fields)
