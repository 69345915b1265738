"""What a run committed so far: the numbers the daemon's status and the scan's summary show."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from worker.outcome import Outcome, reason_kind


@dataclass
class Counts:
    """Files committed by a run (screened, duplicates, failed by reason), and, for a scan,
    files skipped without being read."""

    screened: int = 0
    duplicates: int = 0
    skipped: int = 0  # a scan's: unchanged since a scan by the same model, not read at all
    positives: int = 0  # screened or duplicate files whose label is the positive class
    failed: Counter[str] = field(default_factory=Counter)  # by reason
    out_of_scope: Counter[str] = field(default_factory=Counter)  # refused by the gate, by reason_kind
    unreadable_folders: int = 0  # a scan's walk

    @property
    def handled(self) -> int:
        """Files read: screened, duplicates, out of scope and failures (each has an audit row)."""
        return self.screened + self.duplicates + self.failed.total() + self.out_of_scope.total()

    def add(self, outcome: Outcome, *, positive: bool = False, reason: str | None = None) -> None:
        if outcome is Outcome.FAILED:
            self.failed[reason or "unknown"] += 1
            return
        if outcome is Outcome.OUT_OF_SCOPE:
            self.out_of_scope[reason_kind(reason or "unknown")] += 1
            return
        if outcome is Outcome.SCREENED:
            self.screened += 1
        else:
            self.duplicates += 1
        self.positives += positive
