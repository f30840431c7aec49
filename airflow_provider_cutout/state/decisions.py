"""Reviewers' decisions on a batch's items: approved or rejected, who, when, a note, perhaps a corrected prompt.

A log of its own beside the manifest, ``<output_dir>/_cutout/decisions/``: each decision is one small immutable
JSON Lines file, written whole by the review view (``Decisions.decide``); a batch run that finds many folds them
into one snapshot (``compact``). Apart from the edits' log, so no reader of edits (0.2's included) can take a
decision for an edit's record, and no compaction of that log can drop one.

A decision is made on one edit of an item (its ``fingerprint``) and stands for that edit only: an item edited
again awaits a new review. A rejection may carry a corrected prompt; it stands while the newest decision on the
edit it was made on is still a rejection (approving that edit withdraws it, and an earlier correction that still
stands takes its place), and replaces the item's prompt while the item asks for the prompt it replaced
(``replaces``, the item's own) or for the prompt of the edit it was made on (``edited``: a DAG that took a
correction in as its own prompt). So the next run edits that item again, once. Decisions of one item are
ordered by ``seq`` (one above the highest its writer read), then a rejection before an approval (two reviewers
at once: the safe one stands), and only then by the clock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError
from airflow_provider_cutout.state.binding import owner_here
from airflow_provider_cutout.state.io import (
    MAX_RECORD_BYTES,
    STATE_DIR,
    json_lines,
    list_files,
    read_file,
    remove,
    write_whole,
)
from airflow_provider_cutout.state.signing import DECISION, sign, signed
from airflow_provider_cutout.texts import number

APPROVED, REJECTED = "approved", "rejected"
#: A run folds the decision files into one snapshot when there are more than this many.
DECISION_FILES = 64
#: The largest snapshot of decisions read (about 400 bytes a decision: 150,000 standing ones).
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
log = logging.getLogger(__name__)


def order(decision: dict[str, Any]) -> tuple[float, int, float]:
    """Which of two decisions on one item is newer: ``seq``, then a rejection, then the clock."""
    return number(decision.get("seq")), int(decision.get("decision") == REJECTED), number(decision.get("updated_at"))


def problem_of(decision: Any) -> str | None:
    """What makes a line of the log no decision (``None`` when it is one)."""
    if not isinstance(decision, dict):
        return "not an object"
    if decision.get("decision") not in (APPROVED, REJECTED):
        return f"decision={str(decision.get('decision'))[:40]!r} is not {APPROVED!r} or {REJECTED!r}"
    if not isinstance(decision.get("key"), str | int) or isinstance(decision.get("key"), bool):
        return "no item key"
    if not isinstance(decision.get("fingerprint"), str):
        return "no fingerprint of the edit decided on"
    if not isinstance(decision.get("sha256", ""), str | None):
        return "sha256 is not the digest of the image decided on"
    if "prompt" in decision and not (isinstance(decision["prompt"], str) and isinstance(decision.get("replaces"), str)
                                     and isinstance(decision.get("edited", ""), str)):
        return "a corrected prompt without the prompt it replaces"
    return None


def read_problem(decision: Any, folder_id: str) -> str | None:
    """What keeps a line read from the log of the folder ``folder_id`` from being taken: no decision, not signed by
    the review view (written by hand, by another system, or by an earlier release), or made in another folder
    (copied here, or made before the folder was handed to another DAG)."""
    problem = problem_of(decision)
    if problem is None and not signed(decision, DECISION):
        return ("not signed by the review view (forged, changed, or made by an earlier release: decide on the "
                "item again)")
    if problem is None and (not folder_id or decision.get("folder_id") != folder_id):
        return "made in another folder, or before this folder was handed to its DAG (decide on the item again)"
    return problem


class Decisions:
    """The decisions log of one output folder, as read so far.

    :param folder: the output folder (an ``ObjectStoragePath``).
    :param clock: the wall clock stamped on decisions (``updated_at``).
    """

    def __init__(self, folder: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.path = folder / STATE_DIR / "decisions"
        self._clock = clock
        self._edits: dict[tuple[str, Any], dict[str, Any]] = {}  # (fingerprint, key) -> newest decision
        self._corrections: dict[Any, dict[str, dict[str, Any]]] = {}  # key -> fingerprint -> newest correction
        self._seq: dict[Any, float] = {}  # key -> highest seq read
        self._read: set[str] = set()
        self._broken: set[str] = set()  # files with lines left out: kept for inspection, never folded away
        self._folder = folder
        self._folder_id: str | None = None  # from the folder's owner record, read when there is a decision to read
        self.problems: list[str] = []  # the first few of each file
        self.left_out = 0  # lines left out, in all
        self.unverified: set[Any] = set()  # item keys named by lines left out: the gate holds them back
        self._lock = threading.RLock()

    def on(self, fingerprint: Any, key: Any) -> dict[str, Any] | None:
        """The decision that stands for one edit of an item: the newest made on it."""
        with self._lock:
            return self._edits.get((fingerprint, key))

    def correction(self, key: Any) -> dict[str, Any] | None:
        """The corrected prompt that stands for an item: the newest made on an edit that is still rejected."""
        with self._lock:
            standing = [fix for fp, fix in self._corrections.get(key, {}).items()
                        if (self._edits.get((fp, key)) or {}).get("decision") == REJECTED]
        return max(standing, key=order) if standing else None

    def applies(self, key: Any, prompt: str) -> dict[str, Any] | None:
        """The standing correction of an item that asks for ``prompt``, if it replaces that prompt."""
        fix = self.correction(key)
        if fix is None or fix["prompt"] == prompt or prompt not in (fix["replaces"], fix.get("edited")):
            return None
        return fix

    def loose(self) -> int:
        """How many decision files (not snapshots) the log had when last read: what folding them would save."""
        return sum(not name.startswith("snapshot-") for name in self._read)

    def refresh(self) -> int:
        """Read the decision files written since the last call; return how many there were."""
        with self._lock:
            for _ in range(10):
                names = sorted(n for n in list_files(self.path) if n.endswith(".jsonl") and n not in self._read)
                try:
                    for name in names:
                        self._read_file(name)
                except FileNotFoundError:  # folded into a snapshot meanwhile: listed on the next pass
                    continue
                return len(names)
            raise OSError(f"the decisions log {self.path} keeps changing under this reader; try again")

    def _read_file(self, name: str) -> None:
        limit = MAX_SNAPSHOT_BYTES if name.startswith("snapshot-") else MAX_RECORD_BYTES
        folder_id = self.folder_id()
        left_out: list[Any] = []

        def problem(line: Any) -> str | None:
            found = read_problem(line, folder_id)
            if found is not None:
                left_out.append(line)
            return found

        decisions, problems = json_lines(name, read_file(self.path / name, limit).decode("utf-8", errors="replace"),
                                         problem)
        for found in problems[:5]:
            log.warning("Cutout decisions: %s: left out; inspect it in %s", found, self.path)
        if len(problems) > 5:
            log.warning("Cutout decisions: %d more lines of %s left out", len(problems) - 5, self.path / name)
        if problems:
            self._broken.add(name)
            self.problems.extend(problems[:5])
            self.left_out += len(problems)
            self.unverified.update(line["key"] for line in left_out
                                   if isinstance(line, dict) and isinstance(line.get("key"), str | int))
        for decision in decisions:
            self._merge(decision)
        self._read.add(name)

    def folder_id(self) -> str:
        """The id the folder's owner record gives it ("" when it has none for this place: no decision is taken)."""
        if self._folder_id is None:
            owner = owner_here(self._folder)
            self._folder_id = owner["folder_id"] if owner is not None else ""
        return self._folder_id

    def _merge(self, decision: dict[str, Any]) -> None:
        key, edit = decision["key"], (decision["fingerprint"], decision["key"])
        known = self._edits.get(edit)
        if known is None or order(decision) >= order(known):
            self._edits[edit] = decision
        if "prompt" in decision:
            fixes = self._corrections.setdefault(key, {})
            fix = fixes.get(decision["fingerprint"])
            if fix is None or order(decision) >= order(fix):
                fixes[decision["fingerprint"]] = decision
        self._seq[key] = max(self._seq.get(key, 0.0), number(decision.get("seq")))

    def decide(self, decision: dict[str, Any]) -> dict[str, Any]:
        """Write a decision as a file of its own, now; return it as written.

        :param decision: ``key``, ``fingerprint`` (the edit decided on), ``sha256`` (of the image decided on),
            ``decision`` (``approved`` or
            ``rejected``), ``by``, ``note``, and ``prompt`` with ``replaces`` (the item's own prompt) and ``edited``
            (the prompt of the edit decided on) when the reviewer corrected it.
        """
        problem = problem_of(decision)
        if problem is not None:
            raise ValueError(f"not a decision: {problem}")
        with self._lock:  # numbered above every decision on the item this reader has seen
            self.refresh()
            now = owner_here(self._folder)  # as it is now: the folder seen when reading is the folder written
            if not self.folder_id() or now is None or now["folder_id"] != self.folder_id():
                raise CatalogStateError(f"{self._folder} has no owner record for this place, or another one than "
                                        "when it was read: no decision is made in it now")
            entry = sign({**decision, "folder_id": self.folder_id(), "seq": int(self._seq.get(decision["key"], 0)) + 1,
                          "updated_at": self._clock()}, DECISION)
            name = f"{uuid.uuid4().hex}.jsonl"
            self.path.mkdir(parents=True, exist_ok=True)
            write_whole(self.path / name, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
            self._merge(entry)
            self._read.add(name)
        return entry

    def standing(self) -> list[dict[str, Any]]:
        """What a snapshot keeps: the newest decision on each edit, and the newest correction made on each."""
        with self._lock:
            fixes = [fix for by_edit in self._corrections.values() for fix in by_edit.values()]
            found = {id(d): d for d in [*self._edits.values(), *fixes]}
        return list(found.values())

    def compact(self) -> None:
        """Fold the files read so far into one snapshot, then delete them (a decision written meanwhile is a file
        not read yet: it stays; so does a file with lines left out)."""
        with self._lock:
            folded = self._read - self._broken
            name = f"snapshot-{time.time_ns()}-{uuid.uuid4().hex[:8]}.jsonl"
            lines = "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in self.standing())
            write_whole(self.path / name, lines.encode())
            for old in folded:
                remove(self.path / old)
            self._read = (self._read - folded) | {name}


def reviewed(decision: dict[str, Any]) -> dict[str, Any]:
    """What a decision says, as an entry's ``review``: ``decision``, ``by``, ``at`` (epoch seconds), ``note``, and
    ``prompt`` when the reviewer corrected it."""
    found = {"decision": decision.get("decision"), "by": decision.get("by"), "at": decision.get("updated_at"),
             "note": decision.get("note") or ""}
    if isinstance(decision.get("prompt"), str):
        found["prompt"] = decision["prompt"]
    return found
