"""An item's lifecycle in a batch run: the phases it goes through, and for each transition the manifest
record it writes, whether that record is durable (written before the run goes on) and what must already
be true. The run's steps write no record themselves: they name a transition here.

Phases (in memory, this run only): *planned* (classified from the manifest), *claimed* (this run holds the
claim file of its fingerprint), *sent*, *held* (another run holds the claim; settled later). Records (in the
manifest, for every later run): ``edited`` (charged, result URL known, not stored yet), ``stored`` (the
file is in the folder with its digest), ``failed`` (nothing charged: a later run may try again),
``in_doubt`` (charged, or maybe, without a stored result: sent again only with ``resend_in_doubt``).

Why the durability: a record that says money was (or may have been) spent is durable, so a kill right after
it cannot lose it and a later run does not pay again; the others may be lost in a kill, and a lost one costs
nothing (a lost ``stored`` record leaves the ``edited`` record, whose result is fetched again, free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_cutout.exceptions import CutoutError
from airflow_provider_cutout.state.manifest import EDITED, FAILED, IN_DOUBT, STORED, Manifest

Entry = dict[str, Any]


@dataclass(frozen=True)
class Transition:
    """One transition of an item: from which phase, the record it writes, and what that record needs.

    :param name: what the run's code calls it.
    :param phase: the phase the item is in when it happens (and which step makes it).
    :param status: the status of the record written.
    :param durable: whether the run waits until the record is written before it goes on.
    :param requires: the fields the record must carry (a guard against a bug, never a user's error).
    :param why: what must already be true, in words.
    """

    name: str
    phase: str
    status: str
    durable: bool
    requires: tuple[str, ...]
    why: str


TRANSITIONS = {t.name: t for t in (
    Transition("rejected", "planned (check)", FAILED, False, ("error",),
               "the item failed its checks before anything was sent; nothing was paid"),
    Transition("adopted", "planned (plan)", STORED, False, (),
               "a stored entry from before source versions counted, taken once as unchanged (state.versions)"),
    Transition("revalidated", "planned (plan)", STORED, False, ("source_validators",),
               "a stored item whose sources gave the same bytes under new validators: the next run asks with "
               "these (a lost record costs one more read of the sources, nothing else)"),
    Transition("resending", "claimed (send, restore)", IN_DOUBT, True, ("error",),
               "this run holds the claim; the result's file and URL are gone, so it is sent again: a kill from "
               "here leaves it in doubt, never 'stored' without its file"),
    Transition("charged", "sent (send)", EDITED, True, ("image_url",),
               "the API answered with a result: it was charged, so the record is written before anything else"),
    Transition("stored", "sent or planned (store)", STORED, False, ("stored_path", "sha256", "written_at"),
               "the file was renamed into the folder and its digest computed; a lost record leaves 'edited', "
               "fetched again for free, and the key's other stored entries trusted by digest only"),
    Transition("paid_not_stored", "sent (send, store)", EDITED, True, ("image_url", "error"),
               "charged, and storing failed with an error worth retrying: a later run fetches it again"),
    Transition("in_doubt", "sent (send, store)", IN_DOUBT, True, ("error",),
               "charged or maybe charged (an answer lost, a claim taken over from a dead run), without a result"),
    Transition("failed", "sent (send)", FAILED, False, ("error",),
               "nothing was charged (or the connection allows resending): the claim is released, a later run may "
               "try again"),
    Transition("holder_ended", "held (settle)", IN_DOUBT, False, ("error",),
               "the run that held the claim ended without a result, and this run may not resend"),
    Transition("follower_in_doubt", "planned (settle followers)", IN_DOUBT, False, ("error",),
               "another key's send of the same edit is in doubt"),
    Transition("follower_failed", "planned (settle followers)", FAILED, False, ("error",),
               "another key's send of the same edit failed, or was not made"),
)}


def record(manifest: Manifest, name: str, entry: Entry, **fields: Any) -> Entry:
    """Write transition ``name`` for the item of ``entry``: the record with ``fields`` and its status, as
    durably as the table says; the record written."""
    transition = TRANSITIONS[name]
    written = {**entry, **fields, "status": transition.status}
    missing = [field for field in transition.requires if written.get(field) in (None, "")]
    if missing:
        raise ValueError(f"a {name!r} record of item {entry.get('key')!r} needs {', '.join(missing)}")
    manifest.record(written, durable=transition.durable)
    return written


def paid(entry: Entry | None) -> bool:
    """Whether a record says its edit was paid for, or may have been: stored, a result URL known, or in doubt.
    A failure before anything was sent never replaces such a record (it would lose the result, or the doubt)."""
    if not entry:
        return False
    return entry.get("status") in (STORED, IN_DOUBT) or bool(entry.get("image_url"))


def failure(entry: Entry, err: CutoutError) -> str:
    """The transition of an item whose send or store failed with ``err``: paid for and worth retrying
    (fetched again later), in doubt, or failed and free."""
    paid = bool(entry.get("image_url"))
    if paid and err.retryable:
        return "paid_not_stored"
    if entry.get("taken_over") or ((paid or err.maybe_charged) and not err.retryable):
        return "in_doubt"  # maybe charged, here or by the dead owner this run took the claim from
    return "failed"  # charged nothing, or maybe charged with the connection's consent to resend


def fail(manifest: Manifest, entry: Entry, err: CutoutError, text: str) -> str:
    """Record a failed send or store (``failure`` decides which record); the status written."""
    name = failure(entry, err)
    fields: dict[str, Any] = {"error": text}
    if name == "failed":
        fields["image_url"] = None
    return str(record(manifest, name, entry, **fields)["status"])


__all__ = ["EDITED", "FAILED", "IN_DOUBT", "STORED", "TRANSITIONS", "Transition", "fail", "failure", "paid", "record"]
