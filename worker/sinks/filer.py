"""The inbox's sink: each committed file moves to the destination its audit row names.

``Folders`` decides the destination (``processed/<label>/<date>/``, ``failed/<date>/``, or
for files the gate refused ``processed/OUT_OF_SCOPE/<date>/``,
from ``[inbox] layout``) before the commit, so that the audit row holds it. ``Filer.file``
moves the file there afterwards, never over another file (``move_no_clobber``), and writes a
failed file's ``.error.json``. Should something unexpected stop that move, the file goes
to failed/ instead, its audit row saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.errors import TransientError
from worker.outcome import Outcome
from worker.pipeline.item import Item
from worker.pipeline.ports import Store
from worker.runtime.boundary import contain
from worker.sinks.filing import move_no_clobber, safe_component, write_error_sidecar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Folders:
    processed: Path
    failed: Path
    layout: str = "{label}/{date}"
    out_of_scope: str = "OUT_OF_SCOPE"  # the "label" under processed/ of files the gate refused

    def processed_folder(self, label: str, when: datetime) -> Path:
        parts = self.layout.format(
            label=safe_component(label),
            date=when.strftime("%Y-%m-%d"),
            year=when.strftime("%Y"),
            month=when.strftime("%m"),
            day=when.strftime("%d"),
        )
        return self.processed.joinpath(*(safe_component(p) for p in parts.split("/") if p))

    def failed_folder(self, when: datetime) -> Path:
        return self.failed / when.strftime("%Y-%m-%d")

    def destination(self, item: Item, file_name: str) -> str:
        """Where ``item``'s file goes, by its outcome, label and time."""
        when = item.finished_at or datetime.now(UTC)
        if item.outcome is Outcome.FAILED:
            folder = self.failed_folder(when)
        elif item.outcome is Outcome.OUT_OF_SCOPE:
            folder = self.processed_folder(self.out_of_scope, when)
        else:
            folder = self.processed_folder(item.label or "UNKNOWN", when)
        return str(folder / file_name)


class Filer:
    """Moves committed files to their recorded destinations (``store`` is told of any change)."""

    def __init__(self, store: Store, folders: Folders, reach: Callable[[str], None] = lambda _point: None):
        self.store = store
        self.folders = folders
        self.reach = reach  # the chaos harness's crash points (inert by default)

    def file(self, item: Item, destination: Path, file_name: str) -> Path | None:
        """Move ``item``'s file to ``destination`` (a free name beside it if taken): where it
        went, or None when it stays where it is until the next start (logged).

        ``FileNotFoundError`` when the file is gone already (moved before a crash, or the
        share dropped: the caller tells which); ``TransientError`` when the folder cannot be
        written now.
        """

        def placed(moved: Path) -> None:
            # The file is at ``moved`` and still claimed: a crash from here on is finished by
            # the restart, so the row and the sidecar are written now, not after.
            if moved != destination:
                self.store.set_destination(item.event_id, str(moved))
            if item.outcome is Outcome.FAILED:
                write_error_sidecar(moved, self._details(item, item.reason))
            self.reach("mid-move")

        try:
            moved = move_no_clobber(item.path, destination.parent, destination.name, placed=placed)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not item.path.exists():
                raise
            raise TransientError(
                f"cannot file {shown(item)} into {destination.parent}: {exc.strerror or exc}"
            ) from exc
        except TransientError:
            raise
        except Exception as exc:
            return self._file_as_failed(item, file_name, contain("filing", shown(item), exc))
        verdict = item.label if item.outcome is Outcome.SCREENED else item.outcome
        extra = f" ({item.reason})" if item.reason else ""
        log.info("%s: %s%s -> %s", shown(item), verdict, extra, moved)
        return moved

    def _file_as_failed(self, item: Item, file_name: str, reason: str) -> Path | None:
        """Something unexpected stopped the planned move (or its sidecar): the file goes to
        failed/ instead, its audit row saying so. Should that fail too, it stays claimed until
        the next start, which tries again."""
        item.fail(reason)
        target = self.folders.failed_folder(datetime.now(UTC)) / file_name
        self.store.refile(item.event_id, reason=reason, destination_path=str(target))

        def placed(moved: Path) -> None:
            if moved != target:
                self.store.set_destination(item.event_id, str(moved))
            try:
                write_error_sidecar(moved, self._details(item, reason))
            except Exception as exc:
                log.warning(
                    "%s: no error sidecar (%s: %s); the audit row has the reason",
                    moved,
                    type(exc).__name__,
                    exc,
                )

        try:
            moved = move_no_clobber(item.path, target.parent, target.name, placed=placed)
        except TransientError:
            raise
        except Exception as exc:
            log.error(
                "%s: cannot file it into %s either (%s: %s); it stays claimed until the next start",
                shown(item),
                target.parent,
                type(exc).__name__,
                exc,
            )
            return None
        log.info("%s: failed (%s) -> %s", shown(item), reason, moved)
        return moved

    @staticmethod
    def _details(item: Item, reason: str | None) -> dict[str, Any]:
        return {
            "reason": reason,
            "source": shown(item),
            "sha256": item.sha256,
            "at": datetime.now(UTC).isoformat(),
        }


def shown(item: Item) -> str:
    """How the inbox's logs and sidecars name a file: its path below the inbox."""
    return str(getattr(item.source, "source", item.name))
