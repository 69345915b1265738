"""Derived UIDs: valid DICOM UIDs, the same for the same parts, different for any other."""

from __future__ import annotations

import re
import uuid

import pytest

from worker.pacs import uids

UID = re.compile(r"2\.25\.(0|[1-9][0-9]*)")
SOURCE = "1.2.826.0.1.3680043.8.498.10"
STUDY = "1.2.826.0.1.3680043.8.498.1"
SHA = "a1" * 32


def test_a_derived_uid_is_a_valid_uuid_uid() -> None:
    for parts in [("x",), (SOURCE, SHA, "sr"), ("", ""), ("é" * 300,)]:
        uid = uids.derive_uid(*parts)
        assert UID.fullmatch(uid) and len(uid) <= 64, uid
        value = uuid.UUID(int=int(uid.removeprefix("2.25.")))
        assert value.variant == uuid.RFC_4122 and value.version == 8


def test_the_same_parts_give_the_same_uid() -> None:
    assert uids.instance_uid(SOURCE, SHA, "sr") == uids.instance_uid(SOURCE, SHA, "sr")
    # pinned: a change here changes every UID already sent to a PACS (bump uids.SCHEME instead)
    assert uids.derive_uid("x") == uids.derive_uid("x") == "2.25.250365964060145596124768619885221245536"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((SOURCE, SHA, "sr"), (SOURCE + "1", SHA, "sr")),  # another source
        ((SOURCE, SHA, "sr"), (SOURCE, "b2" * 32, "sr")),  # another model
        ((SOURCE, SHA, "sr"), (SOURCE, SHA, "sc")),  # another kind
        (("ab", "c"), ("a", "bc")),  # the parts are separated, not concatenated
        (("a", "b"), ("b", "a")),
    ],
)
def test_any_other_part_gives_another_uid(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert uids.derive_uid(*a) != uids.derive_uid(*b)


def test_instance_series_device_and_tracking_uids_never_coincide() -> None:
    made = {
        uids.instance_uid(SOURCE, SHA, "sr"),
        uids.series_uid(SOURCE, SHA, "sr"),  # the same strings, another role
        uids.device_uid(SHA),
        uids.tracking_uid(SOURCE, SHA),
    }
    assert len(made) == 4


def test_a_series_is_per_study_model_and_kind() -> None:
    assert uids.series_uid(STUDY, SHA, "sr") == uids.series_uid(STUDY, SHA, "sr")
    assert len({uids.series_uid(STUDY, SHA, k) for k in ("sr", "sc")}) == 2
    assert uids.series_uid(STUDY, SHA, "sr") != uids.series_uid(STUDY + "2", SHA, "sr")


def test_no_parts_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        uids.derive_uid()
