"""What a batch means before anything is sent: its items validated into edits (one fingerprint each),
their file names, chunks for mapped tasks, and ``classify``, which decides from what the manifest and
the claims say of an item what a run does with it."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_cutout.api.models import ImageEditRequest
from airflow_provider_cutout.exceptions import InvalidInputError
from airflow_provider_cutout.state.manifest import EDITED, IN_DOUBT, STORED
from airflow_provider_cutout.texts import first_of, plural

ITEM_FIELDS = ("key", "prompt", "image_urls", "model", "aspect_ratio")
SKIP, REFETCH, EDIT, WAIT, IN_DOUBT_ACTION, TAKE_OVER = "skip", "refetch", "edit", "wait", "in_doubt", "take_over"
RESTORE = "restore"
LIVE, DEAD = "live", "dead"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 150  # well under the 255 bytes a file name may have, with room for the hash and the extension


def chunk_items(items: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Split a catalog into chunks of at most ``size`` items, to map the batch operator over them.

    :param items: the catalog items.
    :param size: the largest chunk.
    """
    if size < 1:
        raise InvalidInputError(f"size={size!r} must be at least 1")
    items = list(items)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    seen: dict[str, tuple[str, int]] = {}  # a key's file stem, case-folded -> (key, its chunk)
    twice = []
    for index, chunk in enumerate(chunks):
        for item in chunk:
            key = item.get("key") if isinstance(item, dict) else None
            if not isinstance(key, str):
                continue  # the batch names it
            other = seen.setdefault(file_stem(key).casefold(), (key, index))
            if other[1] != index:
                twice.append(f"item {key!r} in chunk {index} and item {other[0]!r} in chunk {other[1]}")
    if twice:
        raise InvalidInputError(f"{plural(len(twice), 'key')} would write one file from two chunks (each chunk "
                                f"would pay for its own edit); list each key once:\n  {first_of(twice)}")
    return chunks


def file_stem(key: str) -> str:
    """The file name (without extension) of an item key, which no other key gets: the key itself when it is
    a safe name already (letters, digits, ``.``, ``_`` and ``-``, not starting with a dot, at most
    ``MAX_STEM`` characters); else the key made safe, ``~`` and 16 hex digits of its SHA-256. A safe key
    has no ``~``, so the two kinds never meet, and ``A/1`` and ``A_1`` get different files."""
    safe = (_UNSAFE.sub("_", key).strip(".") or "item")[:MAX_STEM]
    return safe if safe == key else f"{safe}~{hashlib.sha256(key.encode()).hexdigest()[:16]}"


@dataclass
class PlannedEdit:
    """One valid item and what it will cost."""

    key: str
    request: ImageEditRequest
    own_prompt: str | None = None  # the item's own prompt, when a reviewer's correction replaced it

    @property
    def fingerprint(self) -> str:
        """The request fingerprint that keys the manifest."""
        return self.request.fingerprint


@dataclass(frozen=True)
class Defaults:
    """What items without their own ``prompt``, ``model`` or ``aspect_ratio`` get (the operator's)."""

    prompt: Any = None
    model: Any = "gpt-image-1"
    aspect_ratio: Any = "original"


@dataclass(frozen=True)
class Rejected:
    """An item that failed its checks before anything was paid for: its key (``None`` without a usable one),
    where it is (``item 'key'`` or ``items[3]``) and what is wrong, naming the field, the value and the fix."""

    key: str | None
    where: str
    reason: str

    @property
    def problem(self) -> str:
        """Where, and what is wrong."""
        return f"{self.where}: {self.reason}"


def check_items(items: Any, defaults: Defaults, *, base_url: str) -> tuple[list[PlannedEdit], list[Rejected]]:
    """Validate every item: the valid ones planned, the others rejected with their problem.

    :param items: the rendered list of item dicts.
    :param defaults: the operator's prompt, model and ratio.
    :param base_url: the API's base URL (loopback http sources are accepted only beside a loopback API).
    """
    if not isinstance(items, (list, tuple)):
        raise InvalidInputError(f"items must be a list of dicts, got {type(items).__name__}")
    planned: list[PlannedEdit] = []
    rejected: list[Rejected] = []
    stems: dict[str, str] = {}  # file stem, case folded -> key
    for index, item in enumerate(items):
        try:
            planned.append(_plan_item(index, item, defaults, base_url, stems))
        except ValueError as err:
            key = item.get("key") if isinstance(item, dict) else None
            where, _, reason = str(err).partition(": ")
            rejected.append(Rejected(key if isinstance(key, str) and key.strip() else None, where, reason))
    return planned, rejected


def invalid_items_error(owner: str, rejected: list[Rejected], total: int) -> InvalidInputError:
    """One error naming every rejected item (``max_failures`` 0, or more of them than it tolerates); a problem
    that many items share (an operator-level ``model``, say) is said once, with their count and first keys."""
    groups: dict[str, list[str]] = {}
    for r in rejected:
        groups.setdefault(r.reason, []).append(r.where)
    lines = [f"{wheres[0]}: {reason}" if len(wheres) == 1 else
             f"{len(wheres):,} items ({first_of(wheres, 5, ', ')}): {reason}" for reason, wheres in groups.items()]
    return InvalidInputError(f"{owner}: {len(rejected):,} of {total:,} items are invalid; nothing was sent:"
                             f"\n  {first_of(lines)}")


def _plan_item(index: int, item: Any, defaults: Defaults, base_url: str, stems: dict[str, str]) -> PlannedEdit:
    """One item, validated against the others seen so far; a ``ValueError`` names what is wrong."""
    where = f"items[{index}]"
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be a dict with key, prompt and image_urls, got {type(item).__name__}")
    key = item.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"{where}: key={key!r} must be a non-empty string that names the item")
    where = f"item {key!r}"
    unknown = set(item) - set(ITEM_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; use {', '.join(ITEM_FIELDS)}")
    stem = file_stem(key)
    seen = stems.get(stem.casefold())  # one file on a case-insensitive store (macOS, SMB, casefolded ext4)
    if seen == key:
        raise ValueError(f"{where}: the key is listed twice; keys must be unique (each names its own file)")
    if seen is not None and file_stem(seen) == stem:  # two keys whose 64-bit hashes meet: never seen
        raise ValueError(f"{where}: its file name {stem!r} is also that of item {seen!r}; rename one")
    if seen is not None:
        raise ValueError(f"{where}: its file name {stem!r} differs only in case from that of item {seen!r}: on a "
                         "case-insensitive store (macOS, Windows and SMB shares, casefolded file systems) both "
                         "would be one file; make the keys differ in more than case")
    stems[stem.casefold()] = key
    try:
        request = ImageEditRequest.build(
            item.get("prompt", defaults.prompt), item.get("image_urls"), item.get("model", defaults.model),
            item.get("aspect_ratio", defaults.aspect_ratio), base_url=base_url,
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return PlannedEdit(key, request)  # items may share an edit (variants with one photo): it is paid for once


def classify(entry: dict[str, Any] | None, *, file_present: bool, resend_in_doubt: bool,
             holder: str | None = None) -> str:
    """What a run does with one item.

    :param entry: the item's newest manifest entry, if any.
    :param file_present: whether the entry's stored file exists.
    :param resend_in_doubt: the operator's consent to pay again for an item that may have been charged.
    :param holder: ``"live"`` or ``"dead"`` when another run's claim holds the item, else ``None``.
    :return: ``skip`` (stored), ``wait`` (a live run has it), ``restore`` (delivered, its file gone since:
        fetch the result URL again, else edit again within the budget), ``refetch`` (paid for, never stored:
        download again), ``in_doubt`` (maybe charged, no result: never resent without consent), ``take_over``
        (the same, with consent), or ``edit``.
    """
    status = entry.get("status") if entry else None
    if status == STORED and file_present:
        return SKIP
    if holder == LIVE:
        return WAIT
    if status == STORED:
        return RESTORE
    if status in (STORED, EDITED) and entry and entry.get("image_url"):
        return REFETCH
    if holder == DEAD or status == IN_DOUBT:
        return TAKE_OVER if resend_in_doubt else IN_DOUBT_ACTION
    return EDIT
