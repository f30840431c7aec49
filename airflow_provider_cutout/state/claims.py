"""Per-item claims: before an edit is sent, its request fingerprint is claimed in the output folder.

A claim is a file created exclusively and whole (a hard link on local disks, a conditional PUT on S3), so of two
runs that want the same edit exactly one sends it: overlapping runs of one DAG, chunks that list the
same item, two DAGs over one folder. A claim names its owner (DAG, run, task, map index, try, host,
process); the owner keeps a heartbeat file fresh while it runs. A claim stays after its edit was
charged, so it also records the intent to send: an owner that died without recording a result
leaves an item *in doubt*. A definite failure that charged nothing releases the claim.

Layout under ``<output_dir>/_cutout/``: ``claims/<fingerprint>.json``, ``owners/<token>.json``, and
``claims/<fingerprint>.<dead token>.takeover`` when a run takes over an in-doubt item.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError
from airflow_provider_cutout.state.io import STATE_DIR, SUPPORTED_STORES, fresh_bytes, list_files, remove, write_whole


@dataclass(frozen=True)
class Owner:
    """Who holds a claim: one try of one task instance, in one process."""

    token: str
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    map_index: int = -1
    try_number: int = 0
    host: str = ""
    pid: int = 0
    boot_id: str = ""  # the kernel's boot: containers on one machine share it, other machines do not
    pid_ns: str = ""  # the PID namespace: a PID means something only inside its own
    clear_number: int = 0  # how often the DAG run was cleared: its chunks' key lists are per clear

    def shares_pids_with(self, other: Owner) -> bool:
        """Whether ``other``'s PID can be looked up from here: same host name, same boot, same PID namespace
        (containers with host networking or a fixed host name share the name, not the namespace)."""
        return bool(self.boot_id and self.pid_ns) and (self.host, self.boot_id, self.pid_ns) == (
            other.host, other.boot_id, other.pid_ns)

    @classmethod
    def of_task(cls, context: Any) -> Owner:
        """This process, running the task instance of ``context``."""
        ti = context.get("ti") if context else None
        map_index = getattr(ti, "map_index", None)
        dag_run = context.get("dag_run") if context else None
        return cls(
            token=uuid.uuid4().hex[:20], dag_id=getattr(ti, "dag_id", None), run_id=getattr(ti, "run_id", None),
            task_id=getattr(ti, "task_id", None), map_index=-1 if map_index is None else map_index,
            try_number=getattr(ti, "try_number", 0) or 0, host=socket.gethostname(), pid=os.getpid(),
            boot_id=_read_text("/proc/sys/kernel/random/boot_id"), pid_ns=_pid_namespace(),
            clear_number=int(getattr(dag_run, "clear_number", 0) or 0),
        )

    @property
    def origin(self) -> dict[str, Any]:
        """What the manifest's records of this run carry: its catalog (``dag_id.task_id``), run and chunk (empty
        outside a task instance)."""
        if self.dag_id is None:
            return {}
        return {"catalog": f"{self.dag_id}.{self.task_id}", "run": self.run_id, "chunk": self.map_index,
                "clear": self.clear_number}

    def describe(self) -> str:
        """A line that tells a user which run holds an item."""
        return (f"dag_id={self.dag_id} run_id={self.run_id} task_id={self.task_id} map_index={self.map_index} "
                f"try={self.try_number} host={self.host} pid={self.pid}")

    def is_earlier_try_of(self, other: Owner) -> bool:
        """Whether this is an earlier try of ``other``'s task instance (so it no longer runs)."""
        same = (self.dag_id, self.run_id, self.task_id, self.map_index) == (
            other.dag_id, other.run_id, other.task_id, other.map_index)
        return same and self.dag_id is not None and self.try_number < other.try_number


def _read_text(path: str) -> str:
    try:
        with open(path) as source:
            return source.read().strip()
    except OSError:  # not Linux: no PID is ever looked up, heartbeats alone decide
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_token(path: Any) -> str:
    """The token a take-over marker names ("" when it is gone or unreadable: its taker counts as dead)."""
    try:
        return str(fresh_bytes(path).decode("utf-8", errors="replace")).strip()
    except FileNotFoundError:
        return ""


def _owner_from(data: Any) -> Owner | None:
    try:
        fields = data["owner"]
        return Owner(**{f.name: fields[f.name] for f in dataclasses.fields(Owner) if f.name in fields})
    except (ValueError, KeyError, TypeError):
        return None


class Claims:
    """This run's claims in one output folder, and its heartbeat.

    :param folder: the output folder (an ``ObjectStoragePath``).
    :param owner: this run.
    :param heartbeat_timeout: seconds without a heartbeat after which an owner counts as dead.
    """

    def __init__(self, folder: Any, owner: Owner, heartbeat_timeout: float = 120.0) -> None:
        self.owner = owner
        self.timeout = heartbeat_timeout
        self.dir = folder / STATE_DIR / "claims"
        self._owners = folder / STATE_DIR / "owners"
        self._me = self._owners / f"{owner.token}.json"
        self._stop = threading.Event()
        self._last_beat = 0.0
        self._alive: dict[str, tuple[bool, float]] = {}
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Check that the store gives exclusive create, write the first heartbeat, start beating."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._owners.mkdir(parents=True, exist_ok=True)
        probe = self._owners / f"{self.owner.token}.exclusive-check"
        token = self.owner.token.encode()  # not empty: s3fs writes an empty file without the condition
        try:
            self._create(probe, token)
        except FileExistsError:  # a create that succeeded, retried by the file system after a lost answer
            pass
        try:
            self._create(probe, token)
        except FileExistsError:
            pass
        else:
            raise CatalogStateError(
                f"the store of {self.dir} does not refuse a second exclusive create, so claims cannot keep two runs "
                f"from paying for the same edit; put output_dir on {SUPPORTED_STORES}")
        finally:
            remove(probe)
        write_whole(self._me, self._beat_body())  # whole or not at all: a half-read heartbeat would look dead
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._beat_loop, name="cutout-heartbeat", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the heartbeat; this owner is gone from now on."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        remove(self._me)

    def forget_dead_owners(self) -> None:
        """Delete the heartbeat files that killed runs left, once older than ``heartbeat_timeout``: a file that
        fresh is never deleted, whatever a PID says (others would then count its run dead too)."""
        for name in list_files(self._owners):
            if name.endswith(".json") and name != self._me.name and self._stale(name):
                remove(self._owners / name)

    def _stale(self, name: str) -> bool:
        try:
            beat = float(json.loads(fresh_bytes(self._owners / name))["heartbeat_at"])
        except FileNotFoundError:
            return False
        except (ValueError, KeyError, TypeError):
            return False  # heartbeats are written whole: a damaged one is kept for a look, never taken as death
        return time.time() - beat >= self.timeout

    def claim(self, fingerprint: str) -> Owner | None:
        """Claim an edit: ``None`` when it is now this run's, else the owner that holds it."""
        self._check_heartbeat()
        path, failure = self.dir / f"{fingerprint}.json", None
        for attempt in range(5):
            try:
                self._create(path, self._claim_body())
                return None
            except FileExistsError:
                failure = None
            except OSError as err:  # S3 answers 409 while another conditional write of the name is in flight
                failure = err
                time.sleep(0.05 * (attempt + 1))
            holder = self.holder(fingerprint)
            if holder is not None and holder.token == self.owner.token:
                return None  # an earlier attempt created it although the store answered with an error
            if holder is not None:
                return holder
        if failure is not None:
            raise CatalogStateError(f"cannot create the claim {path}: {failure}; nothing more is sent") from failure
        return Owner(token="")

    def holder(self, fingerprint: str) -> Owner | None:
        """Who holds the claim of an edit (an unreadable claim: an owner with no token), or ``None``."""
        path = self.dir / f"{fingerprint}.json"
        for _ in range(20):
            try:
                owner = _owner_from(json.loads(fresh_bytes(path)))
            except FileNotFoundError:
                return None
            except ValueError:
                owner = None
            if owner is not None:
                return owner
            time.sleep(0.05)  # claims are created whole: this one is damaged
        return Owner(token="")  # unreadable: its owner cannot be known, so it counts as dead (in doubt)

    def release(self, fingerprint: str) -> None:
        """Give up a claim after a failure that charged nothing, so a later run can try again."""
        remove(self.dir / f"{fingerprint}.json")

    def take_over(self, fingerprint: str, dead: Owner) -> Owner | None:
        """Take the claim of a dead owner: ``None`` when it is now this run's, else who holds it now. A marker
        created exclusively names the taker; a taker that died before rewriting the claim is taken over in
        turn, so a kill at any moment never wedges the item; one that rewrote it holds the item."""
        self._check_heartbeat()
        named = dead  # the owner the claim names; ``dead`` moves on along takers that died half-way
        for _ in range(16):
            marker = self.dir / f"{fingerprint}.{dead.token or 'unreadable'}.takeover"
            try:
                self._create(marker, self.owner.token.encode())
            except FileExistsError:
                taker = Owner(token=_read_token(marker))
                if taker.token != self.owner.token:
                    holder = self.holder(fingerprint)
                    if holder is None or holder.token != named.token or self.is_alive(taker):
                        return holder if holder is not None else taker  # the claim moved on: look again
                    dead = taker  # died between its marker and the claim: take over from it
                    continue
            holder = self.holder(fingerprint)
            if holder is not None and holder.token != named.token:
                return holder  # released and claimed afresh, or taken over, since the caller looked
            write_whole(self.dir / f"{fingerprint}.json", self._claim_body())
            return None
        return dead

    def _check_heartbeat(self) -> None:
        """Refuse to take an item while this run's own heartbeat is stale: others may soon count it dead."""
        if time.monotonic() - self._last_beat > self.timeout / 2:
            raise CatalogStateError(
                f"this run could not write its heartbeat to {self._owners} for {self.timeout / 2:.0f}s; it stops "
                "sending, since other runs may soon count it as dead")

    def is_alive(self, other: Owner) -> bool:
        """Whether ``other`` still runs (its answer is cached for a few seconds)."""
        if other.token == self.owner.token:
            return True
        cached = self._alive.get(other.token)
        if cached and time.monotonic() - cached[1] < min(5.0, self.timeout / 4):
            return cached[0]
        alive = bool(other.token) and not other.is_earlier_try_of(self.owner) and self._beating(other.token)
        self._alive[other.token] = (alive, time.monotonic())
        return alive

    def _beating(self, token: str) -> bool:
        """A heartbeat fresher than the timeout, from a process that is not gone from this host."""
        try:
            data = json.loads(fresh_bytes(self._owners / f"{token}.json"))
            known, beat = _owner_from(data), float(data["heartbeat_at"])
        except FileNotFoundError:
            return False  # ended, or never started
        except (ValueError, KeyError, TypeError):
            return True  # heartbeats are written whole, so this is damage, not death: never assume a run dead
        if known is None or known.is_earlier_try_of(self.owner):
            return False
        if self.owner.shares_pids_with(known) and not _pid_running(known.pid):
            return False
        return time.time() - beat < self.timeout

    @staticmethod
    def _create(path: Any, data: bytes) -> None:
        try:
            write_whole(path, data, exclusive=True)
        except (ValueError, NotImplementedError, TypeError) as err:
            raise CatalogStateError(
                f"the store of {path.parent} cannot create a file exclusively ({type(err).__name__}: {err}), so "
                f"claims cannot keep two runs from paying for the same edit; put output_dir on {SUPPORTED_STORES}"
            ) from err

    def _claim_body(self) -> bytes:
        return json.dumps({"owner": dataclasses.asdict(self.owner), "claimed_at": time.time()}).encode()

    def _beat_body(self) -> bytes:
        return json.dumps({"owner": dataclasses.asdict(self.owner), "heartbeat_at": time.time()}).encode()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            try:
                write_whole(self._me, self._beat_body())
                self._last_beat = time.monotonic()
            except OSError:
                continue  # claim() refuses new work once the heartbeat is stale
