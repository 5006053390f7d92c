"""Names and reasons made fit to show a person (display.py): what is removed, flattened and capped."""

from __future__ import annotations

import unicodedata

import pytest

from abiquo_workflow import display

RLO, PDF = "\u202e", "\u202c"
ZWSP, ZWNJ, ZWJ, BOM = "\u200b", "\u200c", "\u200d", "\ufeff"
SOFT_HYPHEN = "\u00ad"
ACUTE = "\u0301"  # COMBINING ACUTE ACCENT


@pytest.mark.parametrize(
    "plain", ["web-01", "Zoë Zimmermann", "Acme & Söhne <Ltd>", 'db <primary> & "co"', "wiki-ß-01", "東京 DC"]
)
def test_plain_and_non_ascii_names_are_unchanged(plain: str) -> None:
    assert display.name(plain) == plain


@pytest.mark.parametrize("empty", [None, "", "   ", ZWSP + BOM, "\n\t"])
def test_nothing_to_show_is_the_empty_string(empty: str | None) -> None:
    assert display.name(empty) == ""


def test_a_right_to_left_override_is_removed() -> None:
    assert display.name(f"invoice{RLO}gpj.exe{PDF}") == "invoicegpj.exe"


@pytest.mark.parametrize(
    "mark", ["\u200e", "\u200f", "\u202a", "\u202b", "\u202d", "\u2066", "\u2067", "\u2068", "\u2069"]
)
def test_every_other_bidi_control_is_removed(mark: str) -> None:
    assert display.name(f"web{mark}-01") == "web-01"


@pytest.mark.parametrize("invisible", [ZWSP, ZWNJ, ZWJ, "\u2060"], ids=["ZWSP", "ZWNJ", "ZWJ", "WJ"])
def test_zero_width_characters_are_removed(invisible: str) -> None:
    assert display.name(f"ad{invisible}min") == "admin"


def test_a_byte_order_mark_is_removed() -> None:
    assert display.name(f"{BOM}web-01{BOM}") == "web-01"


def test_a_soft_hyphen_is_removed() -> None:
    assert display.name(f"data{SOFT_HYPHEN}base") == "database"


def test_no_format_character_is_left_in_any_position() -> None:
    every_format = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf")

    assert display.name(f"a{every_format}b") == "ab"


@pytest.mark.parametrize("control", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\t"])
def test_control_characters_become_a_space(control: str) -> None:
    assert display.name(f"web{control}01") == "web 01"


@pytest.mark.parametrize("line_break", ["\n", "\r\n", "\u2028", "\u2029", "\x0b", "\x0c"])
def test_line_breaks_become_a_space(line_break: str) -> None:
    assert display.name(f"web-01{line_break}Accept: https://evil.example/") == (
        "web-01 Accept: https://evil.example/"
    )


def test_runs_of_whitespace_collapse_to_one_space_and_the_ends_are_stripped() -> None:
    assert display.name(" \t John \u00a0\u3000 Doe \n") == "John Doe"


def test_a_space_made_of_removed_characters_is_still_one_space() -> None:
    assert display.name(f"John {ZWSP} {RLO}\n Doe") == "John Doe"


def test_a_lone_surrogate_shows_as_the_replacement_character() -> None:
    assert display.name("web-\ud800-01") == "web-\ufffd-01"


def test_a_name_at_the_limit_is_kept_whole() -> None:
    exact = "x" * display.NAME_LIMIT

    assert display.name(exact) == exact


def test_a_5000_character_name_is_capped_with_an_ellipsis() -> None:
    shown = display.name("x" * 5000)

    assert shown == "x" * (display.NAME_LIMIT - 1) + "…"
    assert len(shown) == display.NAME_LIMIT


def test_the_cap_counts_what_remains_after_cleaning() -> None:
    padded = ZWSP.join("abc") * 1000 + "!"  # 5,001 code points, 3,001 of them shown

    assert display.name(padded) == ("abc" * 40)[: display.NAME_LIMIT - 1] + "…"


def test_no_space_is_left_before_the_ellipsis() -> None:
    words = "word " * 100

    assert display.name(words).endswith("word…")


def test_a_character_with_combining_marks_counts_once() -> None:
    decomposed = ("e" + ACUTE) * display.NAME_LIMIT

    assert display.name(decomposed) == decomposed


def test_the_cap_never_separates_a_character_from_its_combining_marks() -> None:
    shown = display.name("x" * (display.NAME_LIMIT - 2) + "e" + ACUTE + ACUTE + "tail")

    assert shown == "x" * (display.NAME_LIMIT - 2) + "e" + ACUTE + ACUTE + "…"


def test_a_combining_mark_with_nothing_before_it_is_dropped() -> None:
    assert display.name(f"{ACUTE}{ZWSP}{ACUTE}web-01") == "web-01"


def test_marks_piled_past_the_limit_on_one_character_are_dropped() -> None:
    zalgo = "Z" + ACUTE * 500 + "o"

    assert display.name(zalgo) == "Z" + ACUTE * display.MAX_MARKS + "o"


def test_an_address_has_a_longer_cap_than_a_name() -> None:
    address = "a" * 200 + "@example.com"

    assert display.address(address) == address
    assert len(display.address("a" * 5000)) == display.ADDRESS_LIMIT


def test_a_reason_is_kept_whole_up_to_what_the_form_allows() -> None:
    reason = "Too big. " * 111  # 999 characters

    assert display.reason(reason) == reason.strip()


def test_a_longer_reason_is_capped_with_an_ellipsis() -> None:
    shown = display.reason("y" * 5000)

    assert shown == "y" * (display.REASON_LIMIT - 1) + "…"


def test_a_reason_is_flattened_to_one_line() -> None:
    assert display.reason("Too big.\r\nUse the small template.") == "Too big. Use the small template."
