"""What the threads of one batch run share: the counters of what happened to its items, the items other
runs hold, and the two stop signals. Everything else a step needs is handed to it, not shared."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_cutout.exceptions import CutoutError

if TYPE_CHECKING:
    from airflow_provider_cutout.catalog.plan import PlannedEdit
    from airflow_provider_cutout.state.claims import Owner


@dataclass
class Progress:
    """Counters shared by the worker threads (change them under ``lock``), and the stop signals: ``stop``
    sends nothing more (an error every further call would meet, or a kill); ``killed`` starts no job at all."""

    total: int
    skipped: int = 0
    edited: int = 0
    recovered: int = 0
    failed: int = 0
    by_other_runs: int = 0
    shared: int = 0  # stored from the edit another item key paid for (same photo, prompt and model)
    restored: int = 0  # delivered before, file gone since: fetched again (free)
    edited_again: int = 0  # delivered before, file and result URL gone since: edited again (paid)
    credits: int = 0
    errors: list[str] = field(default_factory=list)
    keys: dict[str, list[str]] = field(default_factory=dict)  # outcome -> item keys, for the run's log
    doubtful: list[str] = field(default_factory=list)  # keys that may have been charged without a result
    held: dict[str, tuple[PlannedEdit, Owner]] = field(default_factory=dict)  # by key: items other runs hold
    stop_error: CutoutError | None = None
    started: float = 0.0  # when the run's first job started (monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    killed: threading.Event = field(default_factory=threading.Event)

    def add(self, outcome: str, key: str) -> None:
        """Count one item's outcome (``edited``, ``restored``, ``edited_again``, ``shared``, ``recovered``,
        ``failed``); hold the lock."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.keys.setdefault(outcome, []).append(key)

    def count(self, outcome: str, key: str) -> None:
        """``add`` under the lock."""
        with self.lock:
            self.add(outcome, key)

    def hold(self, item: PlannedEdit, holder: Owner) -> None:
        """An item another run holds, to settle after the sends."""
        with self.lock:
            self.held[item.key] = (item, holder)

    def doubt(self, key: str) -> None:
        """An item charged (or maybe) without a stored result."""
        with self.lock:
            self.doubtful.append(key)

    def stop_with(self, err: CutoutError) -> None:
        """Send nothing more: ``err`` would meet every further call (the first such error is reported)."""
        with self.lock:
            if self.stop_error is None:
                self.stop_error = err
        self.stop.set()

    @property
    def in_doubt(self) -> int:
        """Items charged (or maybe charged) without a stored result."""
        return len(self.doubtful)

    @property
    def done(self) -> int:
        """Items finished one way or another."""
        return (self.skipped + self.edited + self.recovered + self.shared + self.restored + self.edited_again
                + self.failed
                + self.in_doubt + self.by_other_runs)
