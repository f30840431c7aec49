"""The checks of a batch run before anything is paid for: items that failed their own checks recorded as
failed items of this run, every source of the items to edit checked (all failures at once), the budget and
the balance."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.api.sources import sources_failed
from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.catalog.entries import base_entry, written_at
from airflow_provider_cutout.exceptions import InsufficientCreditsError, InvalidInputError
from airflow_provider_cutout.state.chunk_keys import listed_elsewhere, other_chunks, run_folder
from airflow_provider_cutout.state.io import file_sha256
from airflow_provider_cutout.state.manifest import STORED, file_name
from airflow_provider_cutout.texts import first_of, plural

if TYPE_CHECKING:
    from airflow_provider_cutout.catalog.config import BatchConfig
    from airflow_provider_cutout.catalog.plan import PlannedEdit
    from airflow_provider_cutout.catalog.planning import Plan
    from airflow_provider_cutout.catalog.progress import Progress
    from airflow_provider_cutout.hooks.cutout import CutoutHook
    from airflow_provider_cutout.state.manifest import Manifest


class Checks:
    """The checks before sending, and the records of the items they fail.

    :param config: the run's arguments (``max_failures``, ``max_credits``, ``check_balance``...).
    :param hook: reads sources and the balance.
    :param manifest: where failed items are recorded.
    :param progress: the run's counters.
    :param log: the task's logger.
    """

    def __init__(self, config: BatchConfig, hook: CutoutHook, manifest: Manifest, progress: Progress,
                 log: Any) -> None:
        self.config, self.hook, self.manifest, self.progress, self.log = config, hook, manifest, progress, log

    def sources(self, plan: Plan) -> Plan:
        """Check the sources of every item to edit before anything is paid for; the plan without the items
        whose sources failed (recorded as failed), or an error when more failed than ``max_failures`` allows."""
        editing = plan.editing
        if not editing or not self.hook.checks_sources(self.config.check_sources):
            return plan
        started = time.monotonic()
        names = {f"item {item.key!r}: ": item for item in editing}
        failing = self.hook.failing_sources({name: item.request for name, item in names.items()},
                                            concurrency=self.config.max_concurrency)
        self.log.info("Cutout batch: the sources of %s checked in %.2fs; %d failed", plural(len(editing), "item"),
                      time.monotonic() - started, len(failing))
        if failing and not self.config.tolerates(len(failing) + len(plan.rejected), plan.to_attempt):
            raise sources_failed([problem for found in failing.values() for problem in found])
        self.reject([(names[name].key, "; ".join(found), names[name]) for name, found in failing.items()])
        return plan.without({names[name].key for name in failing})

    def conflicts(self, plan: Plan, origin: dict[str, Any], folder: Any, planned: list[PlannedEdit]) -> Plan:
        """The items this run would pay for, restore or fetch again whose key another edit writes: listed in
        another chunk of this run (any item that writes its file), or whose file another catalog (DAG and task)
        overwrote with its own edit since this one stored it. Each run would otherwise pay for its edit over the
        other's, again and again. The plan without them (failed items of this run, left to ``max_failures``), or
        an error before anything is sent."""
        if not origin:
            return plan
        found = conflicts(self.manifest.entries.values(), plan, origin, folder)
        if origin["chunk"] >= 0:  # a key another chunk of this run lists, whether or not it wrote a record of it
            keys = {item.key: item.fingerprint for item in planned}
            writing = {item.key for item in plan.writing}
            runs = run_folder(folder, origin["catalog"], str(origin["run"]))
            theirs = other_chunks(runs, origin["chunk"], origin["clear"], keys)
            found.update({key: chunk_conflict(key, chunk) for key, chunk in theirs.items() if key in writing})
        if found and not self.config.tolerates(len(found) + len(plan.rejected), plan.to_attempt):
            raise InvalidInputError(f"{plural(len(found), 'item')} of this run would write "
                                    f"a file that another edit of the same key writes; nothing was sent:\n  "
                                    f"{first_of(list(found.values()))}")
        self.reject([(key, problem, None) for key, problem in found.items()], record=False)
        return plan.without(set(found))

    def reject(self, failed: list[tuple[str | None, str, PlannedEdit | None]], *, invalid: bool = False,
               record: bool = True) -> None:
        """Record items that failed their checks before anything was paid for as failed items of this run (left
        to ``max_failures``), named in the log and, with a key and ``record``, in the manifest and the gallery.
        A record that says the item was paid for (stored, its result URL known, in doubt) is never replaced by a
        failure: a restore whose source is down keeps its result for the next run."""
        if not failed:
            return
        one = len(failed) == 1
        what = ("item is invalid" if one else "items are invalid") if invalid else (
            "item has sources that failed their checks" if one else "items have sources that failed their checks")
        self.log.warning("Cutout batch: %d %s; %s failed items of this run, nothing is paid for them, the others "
                         "are edited (max_failures=%r):\n  %s", len(failed), what, "it is one of the" if one else
                         "they are", self.config.max_failures, first_of([problem for _, problem, _ in failed]))
        for key, problem, item in failed:
            base = base_entry(item) if item else {"key": key, "fingerprint": "invalid"}
            current = self.manifest.get(item.fingerprint, key) if item else None
            if key is not None and record and not lifecycle.paid(current):
                lifecycle.record(self.manifest, "rejected", base, error=problem)
            with self.progress.lock:
                self.progress.add("failed", key or problem.split(": ", 1)[0])
                self.progress.errors.append(problem)

    def budget(self, plan: Plan) -> None:
        """``max_credits`` and ``check_balance``, before anything is sent."""
        cost = plan.cost
        if self.config.max_credits is not None and cost > self.config.max_credits:
            raise InvalidInputError(
                f"the planned cost is {cost} credits for {plural(len(plan.editing), 'edit')}, over max_credits="
                f"{self.config.max_credits}; raise max_credits or edit fewer items. Nothing was sent.")
        if self.config.check_balance and plan.editing:
            balance = self.hook.get_credit_balance()
            if balance.total < cost:
                raise InsufficientCreditsError(
                    f"the planned cost is {cost} credits but the account has {balance.total:g}; top up or "
                    "edit fewer items. Nothing was sent.")


def chunk_conflict(key: str, chunk: Any) -> str:
    """Why an item is refused: another chunk of this run lists its key with another edit."""
    return (f"item {key!r} is also listed in map_index {chunk} of this run, with another edit: both would be "
            "paid for and write one file; list each key once (chunk_items refuses this before the chunks are "
            "mapped)")


def conflicts(entries: Any, plan: Plan, origin: dict[str, Any], folder: Any) -> dict[str, str]:
    """By key, why a restore this run would make writes over another edit of its key: the item's file holds (by
    its digest) an edit stored there after the one to restore was, by another catalog (DAG and task), or by a
    chunk of a run of this catalog whose other chunk listed the key with this very edit (the catalog lists the
    key twice: whichever chunk runs first pays, so each run in the other order would pay again)."""
    restoring = {item.key: (item, entry) for item, entry in plan.to_restore}
    newest: dict[Any, dict[str, Any]] = {}
    for entry in entries:
        item, mine = restoring.get(entry.get("key"), (None, None))
        if (mine is not None and entry.get("status") == STORED and entry.get("sha256")
                and entry.get("catalog") is not None and written_at(entry) > written_at(mine)
                and written_at(entry) > written_at(newest.get(entry["key"], {}))
                and (entry["catalog"] != origin["catalog"]
                     or (item is not None and _listed_twice(entry, item, folder)))):
            newest[entry["key"]] = entry
    found = {}
    for key, other in newest.items():
        path = folder / file_name(other)
        try:
            holds = file_sha256(str(path)) == other["sha256"]
        except FileNotFoundError:
            holds = False
        except OSError:  # undecided: restoring over it might start the fight; refused for this run
            holds = True
        if holds and other["catalog"] == origin["catalog"]:
            found[key] = (f"item {key!r}: its file {file_name(other)} holds another edit of the key, which map_index "
                          f"{other.get('chunk')} of run {other.get('run')!r} of this catalog stored while another "
                          "chunk of that run listed the key with this item's edit: the catalog lists the key twice, "
                          "and each chunk would pay for its edit over the other's. List each key once "
                          "(chunk_items refuses this before the chunks are mapped); once it is, delete the file and "
                          "the next run restores this edit")
        elif holds:
            found[key] = (f"item {key!r}: its file {file_name(other)} holds another edit of the key, which "
                          f"{other['catalog']} (DAG.task) stored after this catalog's edit; two catalogs writing one "
                          "key in one folder would each restore or pay for their edit over the other's on every run. "
                          "Give each catalog its own output_dir or keys; if the other no longer writes this key, "
                          "delete the file and the next run restores this catalog's edit")
    return found


def _listed_twice(entry: dict[str, Any], item: PlannedEdit, folder: Any) -> bool:
    """Whether ``entry`` was stored by a chunk of a mapped run in which another chunk listed its key with
    ``item``'s edit (the fingerprint it had then, before any source changed since)."""
    chunk, run = entry.get("chunk"), entry.get("run")
    if not isinstance(chunk, int) or chunk < 0 or run is None:
        return False
    runs = run_folder(folder, str(entry["catalog"]), str(run))
    return listed_elsewhere(runs, chunk, str(entry["key"]), item.fingerprint)
