"""Whether a POST was sent by another web site: what the decision pages and the dashboard refuse.

A browser says where a request comes from in `Sec-Fetch-Site` (every current browser) and `Origin`
(on every POST). A `Sec-Fetch-Site` other than `same-origin` or `none` (a typed or pasted URL), or an
`Origin` that is neither `server.public_url`'s nor the address the request came to, is another site's.

Browsers that send neither header (old ones, or scripts) pass: the link's token, or the dashboard's
CSRF token, still guards the POST. `Origin: null` is what a browser sends for our own form under
`Referrer-Policy: no-referrer`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

#: `Sec-Fetch-Site` values of a request our own page (or a typed or pasted URL) can make.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def from_another_site(request: Request, public_url: str) -> bool:
    """True when the browser says `request` was sent by a page of another site."""
    fetch_site = request.headers.get("sec-fetch-site", "").strip().lower()
    origin = request.headers.get("origin", "").strip().lower()
    own = {_origin_of(public_url), _origin_of(str(request.base_url))}
    other_site = bool(fetch_site) and fetch_site not in _OWN_FETCH_SITES
    other_origin = origin not in ("", "null") and origin not in own
    return other_site or other_origin
