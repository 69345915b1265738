"""The chaos harness's crash points: inert unless set, and exact about when they fire."""

from __future__ import annotations

import pytest

from worker.errors import ConfigError
from worker.runtime.faults import Faults


class Killed(Exception):
    pass


def _raise() -> None:
    raise Killed


def test_unset_means_no_faults():
    faults = Faults.from_environ({"XRAY_SCREEN_INFERENCE_BATCH_SIZE": "8"})
    assert faults.point == ""
    for point in ("in-commit", "after-commit", "mid-move"):
        faults.reach(point)  # nothing happens


def test_the_chosen_point_fires_on_its_nth_time_only():
    faults = Faults.from_environ({"XRAY_SCREEN_FAULT": "mid-move", "XRAY_SCREEN_FAULT_EVERY": "3"})
    faults.kill = _raise
    faults.reach("mid-move")
    faults.reach("after-commit")
    faults.reach("mid-move")
    with pytest.raises(Killed):
        faults.reach("mid-move")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"XRAY_SCREEN_FAULT": "mid_move"}, "expected one of in-commit, after-commit, mid-move"),
        ({"XRAY_SCREEN_FAULT": "in-commit", "XRAY_SCREEN_FAULT_EVERY": "0"}, "at least 1"),
        ({"XRAY_SCREEN_FAULT": "in-commit", "XRAY_SCREEN_FAULT_EVERY": "two"}, "whole number"),
    ],
)
def test_a_mistyped_fault_is_refused_not_ignored(environ, message):
    with pytest.raises(ConfigError, match=message):
        Faults.from_environ(environ)
