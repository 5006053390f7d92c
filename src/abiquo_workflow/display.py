"""Text fit to show a person: names and reasons that come from Abiquo, cleaned where they are shown.

VM, user, vApp, enterprise, VDC, datacenter and volume names, and reasons, are typed by Abiquo's users
and reach email subjects, email bodies and the decision pages. Left as they are, a right-to-left
override makes "gpj.exe" read "exe.jpg", zero-width characters make two different names look the
same, and a 5,000-character name pushes everything else off the screen. So, before any of them is
shown, it is cleaned:

- every Unicode format character (category Cf) is removed: bidi embeddings, overrides and isolates,
  LRM and RLM, zero-width space, joiner and non-joiner, word joiner, BOM, soft hyphen, tag characters.
  They are meant to be invisible, so removing them costs a reader next to nothing (at most the
  joined or unjoined form of a letter in Persian or Indic text);
- every other control character, line break and run of whitespace becomes one space, and the text is
  stripped. Reasons are flattened too: an approver's line breaks would otherwise let their reason
  draw lines of its own in the requester's plain-text email, and no template shows them as breaks;
- a lone surrogate (which JSON can smuggle into a `str`, and which UTF-8 cannot encode) shows as
  U+FFFD, the replacement character;
- the length is capped, counting characters as people see them (a base character and the combining
  marks on it count once, and are never cut apart), with "…" as the last character when anything was
  left out. A combining mark with no character before it, and marks beyond `MAX_MARKS` on one
  character ("zalgo" text drawn over the lines around it), are dropped.

The caps, in characters shown, the ellipsis included:

- `NAME_LIMIT`, 120: names of people and things; enough for any name a person types, small enough
  that a subject or a table row stays readable;
- `ADDRESS_LIMIT`, 254: an email address shown in a body, the longest SMTP allows (RFC 5321);
- `REASON_LIMIT`, 1,000: reasons and other sentences, as long as the confirmation form lets an
  approver type, so an approver's own reason is never cut.

Nothing here escapes markup (the templates autoescape) or changes stored data: this only chooses
what text a person is shown.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Iterable, Iterator

ELLIPSIS = "\u2026"
NAME_LIMIT = 120
ADDRESS_LIMIT = 254
REASON_LIMIT = 1000
#: Combining marks kept on one character: Vietnamese stacks two, pointed Hebrew and Indic scripts a few.
MAX_MARKS = 4

_REPLACEMENT = "\ufffd"
#: Control characters, line and paragraph separators and spaces: each run shows as one space.
_SPACE_CATEGORIES = frozenset({"Cc", "Zs", "Zl", "Zp"})


def name(text: str | None) -> str:
    """`text` as a name shown to a person: cleaned, on one line, at most `NAME_LIMIT` characters."""
    return clean(text, NAME_LIMIT)


def address(text: str | None) -> str:
    """An email address as shown in a body: cleaned like a name, at most `ADDRESS_LIMIT` characters."""
    return clean(text, ADDRESS_LIMIT)


def reason(text: str | None) -> str:
    """A reason or another sentence shown to a person: cleaned, at most `REASON_LIMIT` characters."""
    return clean(text, REASON_LIMIT)


def clean(text: str | None, limit: int) -> str:
    """`text` cleaned as the module docstring says and cut to `limit` characters as people see them.

    Reads only as far as the cap needs, so a huge value costs no more than a short one past its limit.
    """
    if not text:
        return ""
    kept = list(itertools.islice(_characters(_visible(text)), limit + 1))
    if len(kept) <= limit:
        return "".join(kept)
    return "".join(kept[: limit - 1]).rstrip() + ELLIPSIS


def _visible(text: str) -> Iterator[str]:
    """The code points of `text` worth showing: no format characters, one space for each run of
    spaces, controls and line breaks, none at either end."""
    started = space_due = False
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf":
            continue
        if category in _SPACE_CATEGORIES:
            space_due = started
            continue
        if space_due:
            yield " "
            space_due = False
        started = True
        yield _REPLACEMENT if category == "Cs" else char


def _characters(code_points: Iterable[str]) -> Iterator[str]:
    """`code_points` grouped into characters as people see them: each base with the marks on it.

    A mark before any base would combine with whatever the template put before the name, so it is
    dropped, as are marks past `MAX_MARKS` on one base.
    """
    character = ""
    for code_point in code_points:
        if unicodedata.category(code_point).startswith("M"):
            if character and len(character) <= MAX_MARKS:
                character += code_point
            continue
        if character:
            yield character
        character = code_point
    if character:
        yield character
