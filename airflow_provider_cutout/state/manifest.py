"""The batch manifest: which edit (by request fingerprint) produced which stored file.

A log in ``<output_dir>/_cutout/manifest/``, modelled on Delta Lake's transaction log: every file in
it is immutable JSON Lines, one entry per line. A writer appends a small segment holding only its
new records (coalesced by one thread; a caller that must not lose a record waits until it is
written), and folds every ``ROLLUP_SEGMENTS`` of its own segments (and its last ones, at the end of a
run) into one. When the files beside the log's largest one reach ``COMPACT_RATIO`` of its size, the
end of a run compacts the whole log into one snapshot, as Delta Lake checkpoints. Bytes written per
record stay constant whatever the size of the catalog. Readers read every file and keep the newest
entry per item key and fingerprint, so concurrent writers (chunks, overlapping runs) never overwrite each
other, and items that share one edit (a photo, a prompt, a model) each keep their own entry.
Older single-file manifests (``cutout-manifest*.json``) are still read. Reviewers' decisions live in a log of
their own beside it (``state.decisions``); ``catalog`` and ``read_manifest`` show them with the entries.

Files of ``INDEX_MIN_RECORDS`` records or more (snapshots, rollups) get an index beside them,
``<name>.idx``: each record's item key, the start of its fingerprint and where its line ends. A reader
given the item keys it needs (one chunk of a mapped catalog) reads only their lines, and those of the
edits they share, from such a file: its cost follows its own items, not the catalog.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import operator
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError
from airflow_provider_cutout.state.decisions import DECISION_FILES, Decisions, reviewed
from airflow_provider_cutout.state.io import (
    MAX_LOG_BYTES,
    STATE_DIR,
    is_local,
    json_lines,
    list_files,
    list_names,
    read_file,
    read_ranges,
    remove,
    write_whole,
)
from airflow_provider_cutout.texts import number

STORED, EDITED, FAILED, IN_DOUBT = "stored", "edited", "failed", "in_doubt"
LEGACY_GLOB = "cutout-manifest*.json"
ROLLUP_SEGMENTS = 256
#: Attempts of one segment write before the writer gives up (transient store errors: S3 503s, NFS hiccups).
WRITE_ATTEMPTS = 5
#: Which record of one item's edit wins when their order is otherwise a tie (``seq``, below, comes first).
_RANK = {STORED: 3, EDITED: 2, IN_DOUBT: 1, FAILED: 0}
#: The log is compacted when the files beside its largest one hold this share of its size: each
#: record is then rewritten a bounded number of times, so bytes per record stay constant.
COMPACT_RATIO = 0.25
#: Log files with at least this many records get an index beside them.
INDEX_MIN_RECORDS = 1000
#: A reader with a scope reads a file through its index when it needs at most this share of the file's records.
INDEX_MAX_SHARE = 0.25
_INDEX_SUFFIX, _FP_DIGITS = ".idx", 16
_INDEXED_BYTES = INDEX_MIN_RECORDS * 64  # smaller files have fewer records than an index needs

log = logging.getLogger(__name__)


def newest(entries: Iterable[dict[str, Any]], by: str = "key", into: dict[Any, dict[str, Any]] | None = None,
           order: Callable[[dict[str, Any]], Any] = lambda e: e.get("updated_at", 0)) -> dict[Any, dict[str, Any]]:
    """The newest entry (by ``order``, ``updated_at`` by default; the later one on a tie) per value of the field
    ``by``, added to ``into`` when given; entries without that field are left out.

    :param entries: manifest entries, in any order.
    :param by: ``key`` (one per item) or ``fingerprint``.
    :param into: entries already known, to update in place.
    :param order: what ranks two entries (``precedence`` for the records of one edit).
    """
    found = {} if into is None else into
    for entry in entries:
        value = entry.get(by)
        if value is None:
            continue
        known = found.get(value)
        if known is None or order(entry) >= order(known):
            found[value] = entry
    return found


def file_name(entry: dict[str, Any]) -> str:
    """The name of an entry's stored file in its folder (however its path was spelled), ``""`` for none."""
    return str(entry.get("stored_path") or "").rstrip("/").rsplit("/", 1)[-1]


def precedence(entry: dict[str, Any]) -> tuple[int, int, float]:
    """The order of the records of one item's edit, trusting no clock across hosts: ``seq`` first (each
    record is numbered one above the record its writer read), then a stored result before a paid one,
    before in doubt, before failed, and only then the writer's clock."""
    return int(number(entry.get("seq"))), _RANK.get(entry.get("status", ""), 0), number(entry.get("updated_at"))


def _log_lost(entry: dict[str, Any], err: BaseException) -> None:
    """A record the store would not take, in the task log: a paid result is never lost unseen."""
    if entry.get("image_url") or entry.get("status") in (STORED, EDITED, IN_DOUBT):
        log.error("Cutout manifest: could not record item %r (status %s, request id %s, result %s, stored at %s): %s",
                  entry.get("key"), entry.get("status"), entry.get("request_id"), entry.get("image_url"),
                  entry.get("stored_path"), err)


def _group(entries: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_fp: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_fp.setdefault(entry["fingerprint"], []).append(entry)
    return by_fp


def parse_segment(name: str, text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries of one log file and a description of each line that is not a valid entry."""
    return json_lines(name, text, _not_an_entry)


def _not_an_entry(entry: Any) -> str | None:
    if isinstance(entry, dict) and isinstance(entry.get("fingerprint"), str) and _plain_key(entry.get("key")):
        return None
    return "not a manifest entry"


def _plain_key(key: Any) -> bool:
    """An item key a record may carry: text or a number (``None`` for records of 0.1 without one)."""
    return key is None or isinstance(key, str | int | float)


class _Index:
    """Where the records of one log file are: the end of each line, its item key and its fingerprint's start."""

    def __init__(self, data: Any, size: int) -> None:
        ends, keys, fps = data["ends"], data["keys"], data["fingerprints"]
        if (data.get("format") != 1 or not len(ends) == len(keys) == len(fps) or (ends and ends[-1] != size)
                or not set(map(type, ends)) <= {int} or not all(map(operator.lt, ends, itertools.islice(ends, 1, None)))
                or not set(map(type, keys)) <= {str, int, type(None)} or not set(map(type, fps)) <= {str}):
            raise ValueError("does not describe this file")  # checked by type, in C: a chunk reads 100,000 of each
        self.ends, self._keys, self._fingerprints = ends, keys, fps

    @staticmethod
    def of(entries: list[dict[str, Any]], data: bytes) -> bytes | None:
        """The index of a file holding ``data``, one line per entry (``None`` when its lines are not exactly
        those entries: a blank or broken line)."""
        ends, end = [], data.find(b"\n")
        while end != -1:
            ends.append(end + 1)
            end = data.find(b"\n", end + 1)
        if len(ends) != len(entries) or ends[-1:] != [len(data)]:
            return None
        return json.dumps({"format": 1, "ends": ends, "keys": [e.get("key") for e in entries],
                           "fingerprints": [e["fingerprint"][:_FP_DIGITS] for e in entries]},
                          separators=(",", ":")).encode()

    def lines(self, keys: set[Any], prefixes: set[str]) -> set[int]:
        """The lines of the records of these item keys, and of the fingerprints that start with these prefixes
        (one pass over each list: cheaper than a lookup table for the few keys a chunk asks for)."""
        found = {line for line, key in enumerate(self._keys) if key in keys} if keys else set()
        if prefixes:
            found.update(line for line, fp in enumerate(self._fingerprints) if fp in prefixes)
        return found

    def ranges(self, lines: Iterable[int]) -> list[tuple[int, int]]:
        """The byte ranges that hold these lines, neighbours merged."""
        ranges: list[tuple[int, int]] = []
        for line in sorted(lines):
            start, end = self.ends[line - 1] if line else 0, self.ends[line]
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((start, end))
        return ranges

    def __len__(self) -> int:
        return len(self.ends)


def _legacy_files(folder: Any) -> list[Any]:
    """The single-file manifests of 0.1 in an output folder (a local folder is listed by name only: it may hold
    100,000 results)."""
    if not is_local(folder):
        return sorted(folder.glob(LEGACY_GLOB)) if folder.exists() else []
    named = (name for name in list_names(folder) if name.startswith("cutout-manifest"))  # fnmatch is slower
    return [folder / name for name in sorted(fnmatch.filter(named, LEGACY_GLOB))]


def _legacy_entries(path: Any) -> list[dict[str, Any]]:
    try:
        data = json.loads(read_file(path, MAX_LOG_BYTES))
    except FileNotFoundError:
        return []
    except ValueError as err:
        raise ValueError(f"manifest {path} is not valid JSON ({err}); move it aside to start over") from None
    found = data.get("entries", {}) if isinstance(data, dict) else {}
    return [{**e, "fingerprint": fp} for fp, e in found.items() if isinstance(e, dict)]


class Manifest:
    """The manifest log of one output folder: what every writer recorded, and this run's writer.

    :param folder: the output folder (an ``ObjectStoragePath``).
    :param writer: a name unique to this run's writer; ``None`` opens it read-only.
    :param clock: the wall clock stamped on records (``updated_at``; never what orders one edit's records).
    :param sleep: how to wait between write attempts (tests count the waits through it).
    :param origin: fields every record of this writer carries: the catalog (``dag_id.task_id``), run and chunk
        that wrote it (``Owner.origin``), so a run can tell another catalog's edit of a key from its own.
    :param keys: the item keys this reader needs (``None``: all). Indexed files are then read only where they
        hold these keys (and the edits added by ``include``); every other file is read whole. What is read is
        always every record of each key and edit in scope, so ``get`` and ``siblings`` answer for them as an
        unscoped reader would; ``entries`` holds them and whatever else was read.
    :param max_records: the most records this reader reads in all (``CatalogStateError`` beyond); ``None``: no cap.
    """

    def __init__(self, folder: Any, writer: str | None = None, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, keys: Iterable[Any] | None = None,
                 origin: dict[str, Any] | None = None, max_records: int | None = None) -> None:
        self.path = folder / STATE_DIR / "manifest"
        self._max_records, self._records_read = max_records, 0  # the review view caps what a folder may cost it
        self._origin = dict(origin or {})  # which catalog, run and chunk wrote a record (see Owner.origin)
        self._clock, self._sleep = clock, sleep
        self.edits: dict[str, dict[Any, dict[str, Any]]] = {}  # fingerprint -> item key -> newest entry
        self.decisions = Decisions(folder, clock=clock)  # reviewers' decisions, a log of their own
        self.problems: list[str] = []
        self.bytes_written = 0
        self._read: set[str] = set()  # log files folded into ``entries``; all immutable
        self._broken: set[str] = set()  # kept in place for inspection, never compacted away
        self._keys = None if keys is None else set(keys)  # the scope: None reads every record
        self._fingerprints: set[str] = set()
        self._partial: dict[str, tuple[_Index, set[int]]] = {}  # files read through their index: lines read
        self._reading = threading.RLock()  # one reader of the log's files at a time (workers refresh too)
        self._writer_name = writer
        self._own: list[tuple[str, list[dict[str, Any]]]] = []  # this writer's segments since its last rollup
        self._rolled: list[str] = []  # this writer's rollups
        self._pending: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._version = self._written = self._seq = 0
        self._error: BaseException | None = None
        self._closed = False
        for legacy in _legacy_files(folder):
            self._merge(_legacy_entries(legacy))
        self.refresh(decisions=True)
        self._thread: threading.Thread | None = None
        if writer is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._write_loop, name="cutout-manifest", daemon=True)
            self._thread.start()

    # -- reading ---------------------------------------------------------------------------------

    def get(self, fingerprint: str, key: Any) -> dict[str, Any] | None:
        """The newest entry of the item ``key`` for the edit ``fingerprint`` known to this reader."""
        with self._cond:
            return self.edits.get(fingerprint, {}).get(key)

    def siblings(self, fingerprint: str) -> list[dict[str, Any]]:
        """The newest entry of every item key recorded for the edit ``fingerprint`` (items that share a photo,
        a prompt and a model share one edit)."""
        with self._cond:
            return list(self.edits.get(fingerprint, {}).values())

    @property
    def entries(self) -> dict[tuple[str, Any], dict[str, Any]]:
        """Every newest entry, by ``(fingerprint, key)``."""
        with self._cond:
            return {(fp, key): entry for fp, keys in self.edits.items() for key, entry in keys.items()}

    def catalog(self) -> list[dict[str, Any]]:
        """The newest entry of each item key, with ``review`` (who decided what, when, why) where a reviewer's
        signed decision stands for its edit and the image it saw (``sha256``): what ``read_manifest``, the
        galleries and the review gate show."""
        found = []
        for entry in newest(self.entries.values(), order=lambda e: number(e.get("updated_at"))).values():
            decision = self.decisions.on(entry.get("fingerprint"), entry.get("key"))
            if decision is not None and decision.get("sha256") == entry.get("sha256"):  # on the image now stored
                found.append({**entry, "review": reviewed(decision)})
            else:  # a review comes from the decisions log only: a record's own ``review`` field is no decision
                found.append({k: v for k, v in entry.items() if k != "review"} if "review" in entry else entry)
        return found

    def source_versions(self) -> dict[str, tuple[str, str | None]]:
        """The version and validator last recorded of each source URL (from the newest entry naming it; the
        validator ``None`` in entries from before validators were recorded): what a re-run asks a source, or its
        folder's listing, whether it still holds. Any validator recorded is safe to ask with: a source confirms
        one only when it is current."""
        found: dict[str, tuple[float, tuple[str, str | None]]] = {}
        with self._cond:
            for keys in self.edits.values():
                for entry in keys.values():
                    when, urls = float(entry.get("updated_at") or 0), entry.get("image_urls") or ()
                    versions = entry.get("source_versions") or ()
                    validators = entry.get("source_validators")
                    for i, (url, version) in enumerate(zip(urls, versions, strict=False)):
                        validator = None if validators is None else (validators[i] if i < len(validators) else "")
                        if version and (url not in found or when >= found[url][0]):
                            found[url] = (when, (version, validator))
        return {url: recorded for url, (_, recorded) in found.items()}

    def refresh(self, *, decisions: bool = False) -> int:
        """Read the log files written since the last call (with ``decisions``, reviewers' new decisions too);
        return how many files there were."""
        with self._reading:
            return (self.decisions.refresh() if decisions else 0) + self._refresh()

    def _refresh(self) -> int:
        for _ in range(10):
            files = {name: size for name, size in list_files(self.path).items()
                     if name.endswith(".jsonl") and name not in self._read}
            vanished = False
            for name in sorted(files):
                try:
                    self._read_file(name, files[name])
                except FileNotFoundError:  # compacted meanwhile: its snapshot shows up on the next listing
                    vanished = True
            if not vanished:
                return len(files)
        raise OSError(f"the manifest log {self.path} keeps changing under this reader; try again")

    def include(self, fingerprints: Iterable[str]) -> None:
        """Add edits to this reader's scope: every record of them is read (the items that share them)."""
        with self._reading:
            if self._keys is None:
                return
            new = set(fingerprints) - self._fingerprints
            self._fingerprints |= new
            vanished = False
            for name in list(self._partial):
                try:
                    self._read_lines(name, set(), new)
                except FileNotFoundError:  # compacted meanwhile: the snapshot is read on the refresh below
                    self._partial.pop(name, None)
                    vanished = True
            if vanished:
                self.refresh()

    def _widen(self) -> None:
        """Read every record of the files read through their index (before folding them into a snapshot)."""
        with self._reading:
            self._keys = None
            for name in list(self._partial):
                del self._partial[name]
                try:
                    self._read_whole(name)
                except FileNotFoundError:  # compacted meanwhile: its snapshot is read whole on the next refresh
                    self._read.discard(name)
            self.refresh()

    def _read_file(self, name: str, size: int) -> None:
        index = self._index(name, size) if self._keys is not None else None
        if index is not None and self._keys is not None and len(self._keys) <= INDEX_MAX_SHARE * len(index):
            self._partial[name] = (index, set())
            try:
                self._read_lines(name, self._keys, self._fingerprints)
            except FileNotFoundError:
                self._partial.pop(name, None)
                raise
        else:  # a scoped writer indexes a large file that has no index (written by 0.2) for the chunks after it
            self._read_whole(name, index=index is None and self._keys is not None and self._writer_name is not None
                             and size >= _INDEXED_BYTES)
        self._read.add(name)

    def _index(self, name: str, size: int) -> _Index | None:
        """The index of a log file, if it has one that describes it (else the file is read whole)."""
        if size < _INDEXED_BYTES:  # too small to have one: no request for it
            return None
        try:
            return _Index(json.loads(read_file(self.path / (name + _INDEX_SUFFIX), MAX_LOG_BYTES)), size)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as err:
            log.warning("Cutout manifest: the index of %s is not usable (%s); the file is read whole",
                        self.path / name, err)
            return None

    def _read_lines(self, name: str, keys: set[Any], fingerprints: set[str]) -> None:
        """Read the records of these keys and fingerprints from an indexed file; should the lines its index names
        not be those records, read the whole file."""
        prefixes = {fp[:_FP_DIGITS] for fp in fingerprints}
        index, done = self._partial[name]
        lines = index.lines(keys, prefixes) - done
        if not lines:
            return
        chunks = read_ranges(self.path / name, index.ranges(lines))
        entries, problems = parse_segment(name, b"".join(chunks).decode("utf-8", errors="replace"))
        if problems or len(entries) != len(lines) or any(
                e.get("key") not in keys and e["fingerprint"][:_FP_DIGITS] not in prefixes for e in entries):
            log.warning("Cutout manifest: %s does not match its index; it is read whole", self.path / name)
            del self._partial[name]
            self._read_whole(name)
            return
        self._merge(entries)
        done.update(lines)

    def _read_whole(self, name: str, *, index: bool = False) -> None:
        """Read a log file whole; with ``index``, write its index beside it when it has none."""
        data = read_file(self.path / name, MAX_LOG_BYTES)
        entries, problems = parse_segment(name, data.decode("utf-8", errors="replace"))
        found = _Index.of(entries, data) if index and not problems and len(entries) >= INDEX_MIN_RECORDS else None
        if found is not None:
            try:
                write_whole(self.path / (name + _INDEX_SUFFIX), found)
            except OSError as err:  # only slower: the next reader reads it whole too
                log.warning("Cutout manifest: could not write the index of %s (%s)", self.path / name, err)
        if problems:
            self._broken.add(name)
            for problem in problems:
                log.warning("Cutout manifest: %s; the file's other records are kept. Inspect %s and "
                            "delete it once it is no longer needed.", problem, self.path / name)
            self.problems.extend(problems)
        self._merge(entries)
        self._read.add(name)

    def _merge(self, entries: list[dict[str, Any]]) -> None:
        self._records_read += len(entries)
        if self._max_records is not None and self._records_read > self._max_records:
            raise CatalogStateError(f"{self.path} holds over {self._max_records:,} records: more than this reader "
                                    "takes (a catalog of that size, or a flood)")
        with self._cond:
            for fp, group in _group(entries).items():
                newest(group, into=self.edits.setdefault(fp, {}), order=precedence)

    # -- writing ---------------------------------------------------------------------------------

    def record(self, entry: dict[str, Any], *, durable: bool = False) -> None:
        """Add or replace the entry of ``entry["key"]`` for ``entry["fingerprint"]``; with ``durable``, wait until
        it is written."""
        with self._cond:
            if self._error is not None:
                _log_lost(entry, self._error)  # the store gave up: the task log is all that is left
            self._check()
            keys = self.edits.setdefault(entry["fingerprint"], {})
            seen = keys.get(entry.get("key"))
            entry = {**entry, **self._origin, "seq": int((seen or {}).get("seq") or 0) + 1, "updated_at": self._clock()}
            keys[entry.get("key")] = entry
            self._pending.append(entry)
            self._version += 1
            version = self._version
            self._cond.notify_all()
            while durable and self._written < version and self._error is None:
                self._cond.wait()
            self._check()

    def close(self, *, compact: bool = True, fold_decisions: bool = True) -> None:
        """Write what is pending, stop the writer, roll this run's segments into one file and, when the
        log has grown enough beside its snapshot, compact it; with ``fold_decisions``, fold the reviewers'
        decision files into one when there are many (one writer of a mapped run does)."""
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._thread = None
        self._check()
        if len(self._own) > 1:
            self._rollup()
        if fold_decisions and self.decisions.loose() > DECISION_FILES:  # one snapshot for the next readers
            try:
                self.decisions.compact()
            except OSError as err:  # only slower for the next readers: never fails a run
                log.warning("Cutout decisions: could not fold the files of %s (%s)", self.decisions.path, err)
        if compact and self._seq:
            sizes = [size for name, size in list_files(self.path).items()
                     if name.endswith(".jsonl") and name not in self._broken]
            if len(sizes) > 1 and sum(sizes) - max(sizes) >= max(sizes) * COMPACT_RATIO:
                self.compact()

    def compact(self) -> None:
        """Fold every log file read so far, and this writer's own, into one snapshot; delete them."""
        self._widen()
        folded = (self._read - self._broken) | {name for name, _ in self._own} | set(self._rolled)
        self._write(f"{self._writer_name or uuid.uuid4().hex}-snapshot-{time.time_ns()}.jsonl",
                    list(self.entries.values()))
        for name in folded:
            self._delete(name)
        self._read -= folded
        listed = list_files(self.path)
        for name in listed:  # indexes of files gone (a writer that died between the two, or lost a race)
            if name.endswith(".jsonl" + _INDEX_SUFFIX) and name[: -len(_INDEX_SUFFIX)] not in listed:
                remove(self.path / name)  # a file written after it is indexed again when read
        self._own, self._rolled = [], []

    def _check(self) -> None:
        if self._error is not None:
            raise OSError(f"cannot write the manifest {self.path}: {self._error}") from self._error

    def _write(self, name: str, entries: list[dict[str, Any]]) -> None:
        """Write one log file whole (its index first, when it gets one: a reader that lists the file finds it)."""
        lines = [json.dumps(e, separators=(",", ":")) for e in entries]
        data = ("\n".join(lines) + "\n").encode()
        index = _Index.of(entries, data) if len(lines) >= INDEX_MIN_RECORDS else None
        if index is not None:
            write_whole(self.path / (name + _INDEX_SUFFIX), index)
            self.bytes_written += len(index)
        write_whole(self.path / name, data)
        self.bytes_written += len(data)
        self._read.add(name)

    def _delete(self, name: str) -> None:
        """Delete a log file folded into another, then its index (a reader that listed it reads it whole)."""
        remove(self.path / name)
        remove(self.path / (name + _INDEX_SUFFIX))

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while self._written == self._version and not self._closed:
                    self._cond.wait()
                if self._written == self._version:
                    return
                version, batch, self._pending = self._version, self._pending, []
            try:
                self._append_retrying(batch)
            except BaseException as err:  # reported to every waiter and at close, and each record to the log
                with self._cond:  # logged before any waiter wakes up to the error
                    self._error = err
                    for entry in batch + self._pending:
                        _log_lost(entry, err)
                    self._cond.notify_all()
                return
            with self._cond:
                self._written = version
                self._cond.notify_all()

    def _append_retrying(self, records: list[dict[str, Any]]) -> None:
        """``_append``, retried with backoff over transient store errors (a new segment name each time)."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return self._append(records)
            except OSError as err:
                if attempt == WRITE_ATTEMPTS:
                    raise
                log.warning("Cutout manifest: writing %d records to %s failed (%s); attempt %d of %d in %.1fs",
                            len(records), self.path, err, attempt + 1, WRITE_ATTEMPTS, 0.2 * 2**attempt)
                self._sleep(0.2 * 2**attempt)

    def _append(self, records: list[dict[str, Any]]) -> None:
        self._seq += 1
        name = f"{self._writer_name}-{self._seq:08d}.jsonl"
        self._write(name, records)
        self._own.append((name, records))
        if len(self._own) >= ROLLUP_SEGMENTS:
            self._rollup()

    def _rollup(self) -> None:
        """Fold this writer's segments into one file: few files for readers, even after a crash."""
        segments, self._own = self._own, []
        last = {(e["fingerprint"], e.get("key")): e for _, records in segments for e in records}
        name = f"{self._writer_name}-rollup-{self._seq:08d}.jsonl"
        self._write(name, list(last.values()))
        self._rolled.append(name)
        for old, _ in segments:
            self._delete(old)
            self._read.discard(old)


def read_manifest(output_dir: Any) -> dict[str, dict[str, Any]]:
    """Entries of a batch's output folder by item key (the newest per key), for downstream tasks; each
    ``stored_path`` in the folder as ``output_dir`` names it now.

    :param output_dir: the batch operator's ``output_dir`` (a path, URI or ``ObjectStoragePath``).
    """
    from airflow.sdk import ObjectStoragePath

    folder = ObjectStoragePath(str(output_dir).rstrip("/") + "/")
    return by_key_here(Manifest(folder), folder)


def by_key_here(manifest: Manifest, folder: Any) -> dict[Any, dict[str, Any]]:
    """``manifest.catalog()`` by item key, each ``stored_path`` the file of its name in ``folder`` as it is named
    now (a folder moved or mounted elsewhere since keeps its files; a path a record names is never taken)."""
    return {entry["key"]: {**entry, "stored_path": str(folder / file_name(entry))} if file_name(entry) else entry
            for entry in manifest.catalog()}
