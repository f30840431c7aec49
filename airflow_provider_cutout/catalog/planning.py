"""The first step of a batch run: from the manifest, the sources' versions and the folder's listing, a frozen
``Plan`` of what the run does with each item (skip, fetch again, restore, edit, follow another key's edit,
leave in doubt). Nothing is sent here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_cutout.api.models import ImageEditRequest
from airflow_provider_cutout.api.sources import Recorded
from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.catalog.entries import Entries, written_at
from airflow_provider_cutout.catalog.plan import (
    IN_DOUBT_ACTION,
    REFETCH,
    RESTORE,
    SKIP,
    PlannedEdit,
    Rejected,
    classify,
)
from airflow_provider_cutout.state.io import STATE_DIR, existing, file_exists, file_sha256, is_local, list_names
from airflow_provider_cutout.state.manifest import EDITED, IN_DOUBT, STORED, Manifest, file_name
from airflow_provider_cutout.texts import first_of, plural

if TYPE_CHECKING:
    from airflow_provider_cutout.catalog.config import BatchConfig
    from airflow_provider_cutout.hooks.cutout import CutoutHook

Entry = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What a run does with its items, decided before anything is sent.

    :param skipped: keys already stored.
    :param to_refetch: paid for, not stored: fetched again (free), with the entry that says so.
    :param to_restore: stored before, file gone: fetched again, or edited again when the URL expired too.
    :param to_edit: to claim and send.
    :param followers: by fingerprint, keys whose edit an item before them in the catalog makes (paid once).
    :param in_doubt: keys that were (or may have been) charged without a result; not sent without consent.
    :param rejected: items that failed their checks (invalid, or failing sources): failed items of this run.
    :param to_attempt: what ``max_failures`` counts against (fixed when planned).
    :param listed: the folder's file names, when it was listed (a local folder, or an unmapped run).
    """

    skipped: tuple[str, ...]
    to_refetch: tuple[tuple[PlannedEdit, Entry], ...]
    to_restore: tuple[tuple[PlannedEdit, Entry], ...]
    to_edit: tuple[PlannedEdit, ...]
    followers: dict[str, list[PlannedEdit]]
    in_doubt: tuple[str, ...]
    rejected: tuple[Rejected, ...]
    to_attempt: int
    listed: frozenset[str] | None

    @property
    def editing(self) -> list[PlannedEdit]:
        """The items this run may pay for: those to edit, and the missing results it may have to edit again."""
        return [*self.to_edit, *(item for item, _ in self.to_restore)]

    @property
    def writing(self) -> list[PlannedEdit]:
        """The items this run writes the file of: those it may pay for, those it fetches again (free), and those
        that copy another item's edit (followers)."""
        return [*self.editing, *(item for item, _ in self.to_refetch),
                *(item for items in self.followers.values() for item in items)]

    @property
    def cost(self) -> int:
        """The planned cost: what the items this run may pay for cost."""
        return sum(item.request.credits for item in self.editing)

    def without(self, keys: set[str]) -> Plan:
        """The plan with the items of ``keys`` no longer to write (their sources failed their checks, or another
        edit writes their key)."""
        followers = {fp: [i for i in items if i.key not in keys] for fp, items in self.followers.items()}
        return dataclasses.replace(self, to_edit=tuple(i for i in self.to_edit if i.key not in keys),
                                   to_restore=tuple((i, e) for i, e in self.to_restore if i.key not in keys),
                                   to_refetch=tuple((i, e) for i, e in self.to_refetch if i.key not in keys),
                                   followers={fp: items for fp, items in followers.items() if items})


def make_plan(config: BatchConfig, hook: CutoutHook, folder: Any, entries: Entries, planned: list[PlannedEdit],
              rejected: list[Rejected], *, chunk: bool, log: Any) -> Plan:
    """Sort the items by what the manifest says of them. With source checks on, each item's fingerprint
    includes its sources' versions, so a replaced photo is edited again."""
    manifest = entries.manifest
    apply_corrections(planned, manifest.decisions, hook.base_url, log)
    if hook.checks_sources(config.check_sources):
        requests = hook.with_versions([item.request for item in planned], concurrency=config.max_concurrency,
                                      known={url: Recorded.of(*recorded)
                                             for url, recorded in manifest.source_versions().items()})
        for item, request in zip(planned, requests, strict=True):
            item.request = _earlier_versions(manifest, folder, item.key, request)
    manifest.include(item.fingerprint for item in planned)  # the items that share their edits
    holds = Holds(folder, _newest_stored(manifest.entries.values()), _charged_unstored(manifest.entries.values()))
    found = [(item, entries.entry_for(item)) for item in planned]
    listed = None
    if chunk and not is_local(folder):  # a few files of a large bucket folder: looked up, not listed
        names = existing(folder, {file_name(e) for _, e in found if e and e.get("stored_path")},
                         config.max_concurrency)
    else:  # a local listing is cheap and exact about names; the sweep of leftovers uses it too
        names = listed = list_names(folder)
    plan = _sorted(config, found, names, holds, rejected, listed)
    _revalidate(manifest, found, set(plan.skipped))
    editing = [item.key for item in plan.to_edit if item.own_prompt is not None]
    if editing:  # said by the run that edits with it, not by every later run that skips its stored edit
        log.info("Cutout batch: %s a reviewer's corrected prompt: %s",
                 plural(len(editing), "item uses", "items use"), first_of(editing, 20, ", "))
    return plan


def _earlier_versions(manifest: Manifest, folder: Any, key: str, request: ImageEditRequest) -> ImageEditRequest:
    """An edit a release before sources were hashed whole recorded as paid and not stored (edited, in doubt),
    or claimed (a run of that release killed, or still running): kept under its legacy versions, so its result
    is fetched, its doubt honoured or its claim waited for, not paid again. (A stored one is adopted under the
    new versions, ``Entries``.)"""
    legacy = request.legacy_request()
    if legacy is None or lifecycle.paid(manifest.get(request.fingerprint, key)):
        return request
    earlier = manifest.get(legacy.fingerprint, key)
    if earlier is not None and earlier.get("status") in (EDITED, IN_DOUBT):
        return legacy
    if earlier is None and file_exists(folder / STATE_DIR / "claims" / f"{legacy.fingerprint}.json"):
        return legacy
    return request


def _revalidate(manifest: Manifest, found: list[tuple[PlannedEdit, Entry | None]], skipped: set[str]) -> None:
    """Skipped items whose sources gave the same bytes under new validators (another CDN node, a re-upload):
    recorded with the new validators, so the next run asks with those (a 304) instead of reading the bytes."""
    for item, entry in found:
        validators = list(item.request.source_validators)
        if entry and item.key in skipped and any(validators) and entry.get("source_validators") != validators:
            lifecycle.record(manifest, "revalidated", entry, source_validators=validators,
                             written_at=written_at(entry))  # recorded anew, the file was not written again


def _sorted(config: BatchConfig, found: list[tuple[PlannedEdit, Entry | None]], names: Any, holds: Holds,
            rejected: list[Rejected], listed: Any) -> Plan:
    """``classify`` each item; the first item of an edit leads it, the others follow."""
    skipped, refetch, restore, edit, doubt = [], [], [], [], []
    followers: dict[str, list[PlannedEdit]] = {}
    leaders: set[str] = set()
    for item, entry in found:
        stored = str(entry.get("stored_path") or "") if entry else ""
        present = stored.rsplit("/", 1)[-1] in names and holds(entry)
        action = classify(entry, file_present=present, resend_in_doubt=config.resends(item.key))
        if action == SKIP:
            skipped.append(item.key)
        elif action == REFETCH and entry is not None:
            refetch.append((item, entry))
        elif action == IN_DOUBT_ACTION:
            doubt.append(item.key)
        elif item.fingerprint in leaders:  # the same edit as an item before it: paid for once
            followers.setdefault(item.fingerprint, []).append(item)
        else:
            leaders.add(item.fingerprint)
            if action == RESTORE and entry is not None:
                restore.append((item, entry))
            else:
                edit.append(item)
    return Plan(skipped=tuple(skipped), to_refetch=tuple(refetch), to_restore=tuple(restore), to_edit=tuple(edit),
                followers=followers, in_doubt=tuple(doubt), rejected=tuple(rejected),
                to_attempt=len(edit) + len(restore) + len(refetch) + len(rejected),
                listed=None if listed is None else frozenset(listed))


def apply_corrections(planned: list[PlannedEdit], decisions: Any, base_url: str, log: Any) -> None:
    """A prompt a reviewer corrected replaces the item's while the item still asks for the prompt it replaced
    (``state.decisions``): the item is edited again once with it (a new fingerprint), then skipped like any
    other. A DAG whose prompt for the item changed since wins. (``make_plan`` names the corrected items the run
    edits: the ones whose ``own_prompt`` is set and that are to edit, not those stored under it already.)"""
    overruled = []
    for item in planned:
        request = item.request
        fix = decisions.applies(item.key, request.prompt)
        if fix is None:
            standing = decisions.correction(item.key)
            if standing is not None and standing["prompt"] != request.prompt:
                overruled.append(item.key)
            continue
        try:
            item.request = ImageEditRequest.build(fix["prompt"], list(request.image_urls), request.model,
                                                  request.aspect_ratio, base_url=base_url)
        except ValueError as err:  # recorded through the review view, which checks it: a damaged entry
            log.warning("Cutout batch: item %r keeps its prompt: the corrected one is not valid (%s)", item.key, err)
            continue
        item.own_prompt = request.prompt
    if overruled:
        log.info("Cutout batch: %s the DAG's prompt over a reviewer's correction (the DAG's prompt changed since): "
                 "%s", plural(len(overruled), "item keeps", "items keep"), first_of(overruled, 20, ", "))


def _newest_stored(entries: Any) -> dict[str, float]:
    """When each stored file was last written, from the manifest: a key edited again (a new photo, a new
    prompt) overwrites its file, so only the newest entry stored at a path is sure to be what it holds."""
    newest: dict[str, float] = {}
    for entry in entries:
        name, when = file_name(entry), written_at(entry)
        if name and entry.get("status") == STORED and when > newest.get(name, -1.0):
            newest[name] = when
    return newest


def _charged_unstored(entries: Any) -> dict[str, set[str]]:
    """By key, the edits (fingerprints) charged and never recorded stored (``edited``, or in doubt after a result
    URL was known): each may have overwritten the key's file before its run died (a "stored" record is written
    after the rename, and not waited for)."""
    unstored: dict[str, set[str]] = {}
    for entry in entries:
        if entry.get("status") in (EDITED, IN_DOUBT) and entry.get("image_url") and entry.get("key") is not None:
            unstored.setdefault(str(entry["key"]), set()).add(str(entry.get("fingerprint")))
    return unstored


@dataclass(frozen=True)
class Holds:
    """Whether an entry's stored file (known to be in the folder) holds its edit: it does when the entry is
    the newest written there and no other edit of its key was charged without a "stored" record (a run killed
    between its rename and its record); otherwise (a photo changed, then changed back; such a kill) only when
    the file's digest is the one it recorded. Else the item counts as missing its file, and is restored."""

    folder: Any
    newest: dict[str, float]
    unstored: dict[str, set[str]]  # key -> fingerprints charged, never recorded stored

    def __call__(self, entry: Entry | None) -> bool:
        if entry is None or entry.get("status") != STORED:
            return True
        overwritten = bool(self.unstored.get(str(entry.get("key")), set()) - {entry.get("fingerprint")})
        if not (overwritten and entry.get("sha256")) and written_at(entry) >= self.newest.get(file_name(entry), 0.0):
            return True  # (an entry from before digests were kept has nothing to be checked against)
        if not entry.get("sha256"):
            return False
        path = self.folder / file_name(entry)  # the folder as it is now (it may have moved since)
        try:
            return bool(file_sha256(str(path)) == entry["sha256"])
        except FileNotFoundError:
            return False
        except OSError as err:  # undecided: restoring might pay again for a result that is there
            raise OSError(f"could not read {path} to check which edit it holds ({err}); nothing was sent, "
                          "retry the task") from err
