"""worker/names.py: any name a share holds is kept, fitted, stored and shown losslessly."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from worker.names import NAME_MAX, as_fields, as_hex, as_text, byte_length, fit, for_log, from_stored

LATIN1 = os.fsdecode(b"\xe9t\xe9.jpeg")  # a Latin-1 name, as an old SMB client writes it

# Any bytes but '/' and NUL, up to NAME_MAX: what one POSIX path component can be.
raw_names = st.binary(min_size=1, max_size=NAME_MAX).filter(lambda b: b"/" not in b and b"\0" not in b)


def test_a_latin1_name_is_stored_as_readable_text_plus_its_bytes():
    assert as_text(LATIN1) == "\\xe9t\\xe9.jpeg"
    assert as_hex(LATIN1) == "e974e92e6a706567"
    assert from_stored(as_text(LATIN1), as_hex(LATIN1)) == LATIN1
    assert as_fields("path", LATIN1) == {"path": "\\xe9t\\xe9.jpeg", "path_hex": "e974e92e6a706567"}


def test_a_utf8_name_is_its_own_text_and_has_no_hex():
    for name in ("chest.jpeg", "Röntgen-胸部.png", "two\nlines.dcm", " lead.jpeg", "trail."):
        assert as_text(name) == name and as_hex(name) is None and from_stored(name, None) == name
        assert as_fields("path", name) == {"path": name}


def test_a_literal_backslash_x_and_a_raw_byte_read_the_same_as_text_but_not_as_bytes():
    literal = "\\xe9t\\xe9.jpeg"
    assert as_text(literal) == as_text(LATIN1)
    assert (as_text(literal), as_hex(literal)) != (as_text(LATIN1), as_hex(LATIN1))


@given(raw_names)
def test_every_name_round_trips_through_its_stored_form(raw: bytes):
    name = os.fsdecode(raw)
    text, hex_bytes = as_text(name), as_hex(name)
    text.encode("utf-8")  # always storable as text
    assert os.fsencode(from_stored(text, hex_bytes)) == raw


@given(raw_names, st.sampled_from(["", "-1", "-99999", "0123456789abcdef~"]))
def test_fit_keeps_names_that_fit_and_cuts_only_what_the_limit_forces(raw: bytes, suffix: str):
    name = os.fsdecode(raw)
    fitted = fit(name, suffix)
    assert byte_length(fitted) <= NAME_MAX
    if suffix == "" and byte_length(name) <= NAME_MAX:
        assert fitted == name  # never changed when it fits
    if byte_length(name) + len(suffix) <= NAME_MAX:
        assert byte_length(fitted) == byte_length(name) + len(suffix)  # nothing cut
    # a valid UTF-8 name stays valid UTF-8: never cut inside a character
    if as_hex(name) is None:
        assert as_hex(fitted) is None


def test_fit_keeps_the_extension_and_trailing_dots():
    long = "a" * 300 + ".jpeg"
    assert fit(long).endswith(".jpeg") and byte_length(fit(long)) == NAME_MAX
    assert fit(long, "-12").endswith("-12.jpeg")
    assert fit("film.", "-1") == "film.-1"  # a trailing dot is part of the name, not an extension
    assert fit("film.") == "film."
    assert fit("é" * 200 + ".png").endswith(".png")  # cut between letters, not inside one
    assert fit("é" * 200 + ".png").encode("utf-8")
    claimed = fit("0123456789abcdef~" + "b" * 250 + ".dcm")
    assert byte_length(claimed) == NAME_MAX and claimed.startswith("0123456789abcdef~")


def test_for_log_leaves_no_control_escape_override_or_undecodable_byte():
    hostile = "a\nb\r\x1b[31mred\x1b]0;title\x07\x9b2J\u202eevil\u2066" + LATIN1
    line = for_log(hostile)
    assert line == "a\\nb\\r\\x1b[31mred\\x1b]0;title\\x07\\x9b2J\\u202eevil\\u2066\\xe9t\\xe9.jpeg"
    assert line.isprintable() and line.encode("utf-8")
    assert for_log("Röntgen 胸部 ü.jpeg") == "Röntgen 胸部 ü.jpeg"  # letters are not escaped
