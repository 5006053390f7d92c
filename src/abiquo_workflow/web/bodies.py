"""Request bodies read with a size limit: refused as soon as they pass it, never read whole first.

`/callback` and the decision forms are open to anyone who can reach the service, so neither may let a
client make us hold an unbounded body in memory (uvicorn sets no limit of its own).
"""

from __future__ import annotations

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
