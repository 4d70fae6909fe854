"""De-duplicating records by a deterministic id, for consumers of an at-least-once topic.

The scoring job writes each prediction at least once; a replay after a crash can write some of
them again, with the same ``prediction_id`` (source topic/partition/offset). A consumer that
keeps the ids it has seen recently drops those repeats.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable


class Deduplicator:
    """Remembers the last ``window`` ids; :meth:`first_time` says whether an id is new.

    Replays re-deliver records written shortly before a crash, so a bounded window (default one
    million ids, ~100 MB) catches them without growing forever on an endless stream."""

    def __init__(self, window: int = 1_000_000) -> None:
        if window < 1:
            raise ValueError("the de-duplication window must hold at least one id")
        self.window = window
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self.duplicates = 0

    def first_time(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen within the window, False for a repeat."""
        if key in self._seen:
            self._seen.move_to_end(key)
            self.duplicates += 1
            return False
        self._seen[key] = None
        if len(self._seen) > self.window:
            self._seen.popitem(last=False)
        return True
