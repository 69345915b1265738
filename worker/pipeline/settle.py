"""Settling: which hashed items need the model, and which already have their verdict.

One ``Settler`` per run (the daemon's, a scan's): for each content it remembers the item
screening it until that item is committed, so:

- a content this model already has a result for (``known``, from the database) is a
  duplicate with that verdict;
- a content met again while its first item is being screened waits for that verdict (a
  twin), and one met again after it is decided copies it;
- everything else goes through the model, once per content.

Failed items (unreadable, refused by a gate) pass through as they are. After a commit,
``forget`` hands the committed contents over to the database (``known`` finds them from
then on), so the map holds only what is in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.answers import Answer
from worker.db.store import StoredResult
from worker.pipeline.item import Item


class Settler:
    def __init__(self) -> None:
        self._first: dict[str, Item] = {}  # content -> the item screening it, until committed

    def unknown(self, items: Iterable[Item]) -> set[str]:
        """The contents of ``items`` to ask the database about (not in flight here)."""
        return {i.sha256 for i in items if i.sha256 and not i.decided and i.sha256 not in self._first}

    def settle(
        self, items: Iterable[Item], known: Mapping[str, StoredResult]
    ) -> tuple[list[Item], list[Item]]:
        """``(to_screen, decided)``: the items the model must see, and those decided now.

        Twins of an item still being screened are in neither list: ``decide`` returns them
        with it.
        """
        to_screen: list[Item] = []
        decided: list[Item] = []
        for item in items:
            if item.decided or item.sha256 is None:
                decided.append(item)
                continue
            first = self._first.get(item.sha256)
            if first is not None and first.decided:
                item.copy_verdict(first)
                decided.append(item)
            elif first is not None:
                first.twins.append(item)
            elif item.sha256 in known:
                item.copy_stored(known[item.sha256])
                decided.append(item)
            else:
                self._first[item.sha256] = item
                to_screen.append(item)
        return to_screen, decided

    def decide(self, item: Item, answer: Answer, positive_class: str) -> list[Item]:
        """Record the model's answer for ``item``; it and its twins, decided."""
        item.decide(answer, positive_class)
        return [item, *self._release_twins(item)]

    def fail(self, item: Item, reason: str, *, retry: bool = False) -> list[Item]:
        """``item`` (being screened) failed before the model: it and its twins, decided."""
        item.fail(reason, retry=retry)
        return [item, *self._release_twins(item)]

    def _release_twins(self, item: Item) -> list[Item]:
        twins, item.twins = item.twins, []
        for twin in twins:
            twin.copy_verdict(item)
        return twins

    def forget(self, items: Iterable[Item]) -> None:
        """``items`` are committed: the database answers for their contents from now on.

        An item whose failure will be retried is forgotten too, so its next attempt (and
        any twin met later) goes through the model again.
        """
        for item in items:
            if item.sha256 and self._first.get(item.sha256) is item:
                del self._first[item.sha256]
