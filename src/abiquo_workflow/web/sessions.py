"""The dashboard's sessions: signed, expiring cookies, and CSRF tokens bound to them.

A session is a cookie holding a random session id, the time it was issued and what the dashboard
keeps about the person (who they are in Abiquo, as `access.Viewer`), signed with a key derived from
`server.secret_key` for this purpose alone (an itsdangerous salt of its own): a link token is not a
cookie and a cookie is not a link token, however either is pasted. Nothing is kept on the server: the
session ends `dashboard.session_lifetime` seconds after sign-in, checked from its signed time (the
cookie itself is a browser-session cookie: closing the browser ends it sooner).

Every POST form of the dashboard carries a CSRF token: an HMAC of the session id under another key of
its own. A person who has not signed in gets a session without a viewer, so the sign-in form is
protected the same way (nobody can sign a visitor in as someone else). The token is compared in
constant time; another site can neither read it nor make it up.

The cookie is `HttpOnly` (no script reads it), `SameSite=Lax` (another site's POST carries none) and,
when `server.public_url` is https, `Secure` under the `__Host-` prefix (no other host or path can set
it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

# Changing a salt ends every session (or CSRF token) issued under it; bump the suffix only on purpose.
_SESSION_SALT = "abiquo-workflow/dashboard-session/v1"
_CSRF_PURPOSE = b"abiquo-workflow/dashboard-csrf/v1"

COOKIE = "awf_session"
#: The cookie's name over https: browsers accept it only with Secure, Path=/ and no Domain.
SECURE_COOKIE = "__Host-awf_session"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: its id, when it was issued (Unix time) and what it holds about the viewer
    (empty before sign-in)."""

    session_id: str
    issued_at: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def signed_in(self) -> bool:
        return bool(self.data)


class SessionKeeper:
    """Issues, reads and clears session cookies, and makes and checks their CSRF tokens.

    Parameters
    ----------
    secret_key:
        `server.secret_key`; the keys of sessions and CSRF tokens are derived from it, each for its own
        purpose, so neither is worth anything as an emailed link's token, nor the other way round.
    lifetime:
        Seconds a session lasts after sign-in (`dashboard.session_lifetime`).
    secure:
        True when people reach us over https (`server.public_url`): the cookie is then `Secure`.
    """

    def __init__(self, secret_key: str, *, lifetime: int, secure: bool) -> None:
        if not secret_key:
            raise ValueError("a secret key is required to sign sessions")
        self._serializer = URLSafeTimedSerializer(secret_key, salt=_SESSION_SALT)
        self._csrf_key = hmac.new(secret_key.encode(), _CSRF_PURPOSE, hashlib.sha256).digest()
        self.lifetime = lifetime
        self.secure = secure
        self.cookie = SECURE_COOKIE if secure else COOKIE

    def __repr__(self) -> str:
        return f"SessionKeeper(lifetime={self.lifetime}, secure={self.secure})"

    def new(self, data: dict[str, Any] | None = None, *, now: float | None = None) -> Session:
        """A fresh session (a new id: signing in never keeps the id the visitor had before)."""
        return Session(secrets.token_urlsafe(18), time.time() if now is None else now, dict(data or {}))

    def read(self, value: str | None, *, now: float | None = None) -> Session | None:
        """The session a cookie holds, or None when it is missing, forged, or older than `lifetime`."""
        if not value:
            return None
        try:  # an expired signature is a BadSignature too
            payload = self._serializer.loads(value, max_age=self.lifetime)
        except BadSignature:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("s"), str):
            return None
        issued = payload.get("t")
        if (
            not isinstance(issued, int | float)
            or (time.time() if now is None else now) - issued > self.lifetime
        ):
            return None
        data = payload.get("d")
        return Session(payload["s"], float(issued), data if isinstance(data, dict) else {})

    def from_request(self, cookies: dict[str, str]) -> Session | None:
        return self.read(cookies.get(self.cookie))

    def store(self, response: Response, session: Session) -> None:
        """Set `session` as the response's cookie.

        A browser-session cookie (no Max-Age): closing the browser ends it, and until then the browser
        still sends it after `lifetime`, so the page can say the sign-in has ended instead of just
        showing the sign-in form.
        """
        value = self._serializer.dumps(
            {"s": session.session_id, "t": int(session.issued_at), "d": session.data}
        )
        response.set_cookie(
            self.cookie,
            str(value),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="lax",
        )

    def clear(self, response: Response) -> None:
        """Remove the session cookie from the browser (sign-out)."""
        response.delete_cookie(self.cookie, path="/", secure=self.secure, httponly=True, samesite="lax")

    def csrf_token(self, session: Session) -> str:
        """The token every POST form of `session` carries."""
        return hmac.new(self._csrf_key, session.session_id.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session | None, given: str | None) -> bool:
        """True when `given` is `session`'s token (compared in constant time)."""
        if session is None or not given:
            return False
        return hmac.compare_digest(self.csrf_token(session), given)
