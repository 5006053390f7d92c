"""Database URLs: the two kinds users may write, and how they are shown.

Users write `sqlite:///path` or `postgresql://…` (docs/design.md, `database.url`), with or without a
driver name; the store picks the driver itself (`sqlite.py`, `postgres.py`, `schema.py`), so the
driver is left out once a URL is checked. Passwords never appear in messages or logs.
"""

from __future__ import annotations

from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url

from abiquo_workflow.exceptions import StoreError

_SQLITE_DRIVERS = {"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"}
_POSTGRES_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg"}


def parse_url(url: str) -> URL:
    """Check a user's database URL and return it with its driver left out (`sqlite` or `postgresql`)."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise StoreError(
            f"{url!r} is not a database URL: expected sqlite:///path or postgresql://…"
        ) from error
    if parsed.drivername in _SQLITE_DRIVERS:
        if not parsed.database or ":memory:" in parsed.database or parsed.query.get("mode") == "memory":
            raise StoreError(
                "an in-memory SQLite database cannot be shared by the server and its worker: "
                "give a file, for example sqlite:///./abiquo-workflow.db"
            )
        return parsed.set(drivername="sqlite")
    if parsed.drivername in _POSTGRES_DRIVERS:
        return parsed.set(drivername="postgresql")
    raise StoreError(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///path or postgresql://user@host/db"
    )


def display_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.render_as_string(hide_password=True)


def libpq_conninfo(url: str) -> str:
    """A `postgresql://` URL psycopg can connect with directly (password included)."""
    return parse_url(url).render_as_string(hide_password=False)
