"""The single edit's intent to send, recorded before it is sent, so that no later try pays for it again
unseen: a kill after the charge and before the result was recorded leaves the edit *in doubt*.

With an ``output_path``, the batch's claim (``state.claims``) in its folder: one claim per edit and target,
kept after the charge. Without one, on Airflow 3.3+, the task state store (``context["task_state_store"]``,
kept across a task instance's tries): the intent first, then the result, which a retry returns for free.
On older Airflow, without ``output_path``, nothing survives a killed try (docs/cost-safety.md says so).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError, ClaimedElsewhereError, CutoutError
from airflow_provider_cutout.state.claims import Claims, Owner
from airflow_provider_cutout.state.io import is_folder
from airflow_provider_cutout.state.records import (
    find_stored_edit,
    forget_stored_edit,
    read_record,
    remember_charged_edit,
)

STATE_KEY = "cutout_edit"
IN_DOUBT = ("may have been charged; it is not sent again by itself: check the account's usage, then set "
            "force=True to edit (and pay) again")


def earlier_intent(output_path: Any, fingerprint: str, context: Any) -> bool:
    """Whether an earlier run left a claim of this edit in ``output_path``, or a record of its charged result."""
    intent = SendIntent(output_path, fingerprint, context)
    if intent.claims is None:
        return False
    try:
        return intent.claims.holder(intent.name) is not None or read_record(output_path, fingerprint,
                                                                             charged=True) is not None
    except (FileNotFoundError, NotADirectoryError):  # no folder there: nothing recorded (the send says why)
        return False


class SendIntent:
    """Before one edit is sent: ``begin`` (an earlier try's result, or an error when it may have been charged),
    then ``sent`` or ``failed``, and ``close``.

    :param output_path: the operator's ``output_path``, or ``None``.
    :param fingerprint: the edit's fingerprint.
    :param context: the task's context (its task instance, and the task state store on Airflow 3.3+).
    :param force: consent to pay again for an edit an earlier try may have been charged for.
    """

    def __init__(self, output_path: Any, fingerprint: str, context: Any, *, force: bool = False) -> None:
        self.output_path, self.fingerprint, self.force = output_path, fingerprint, force
        self.store = None if output_path else context.get("task_state_store")
        self.claims: Claims | None = None
        self.taken = False  # the claim was taken over: an earlier owner's send may have been charged
        self.charged: dict[str, Any] | None = None  # an earlier try's charged result, not stored: fetch it, free
        self.opened = False
        if output_path:
            from airflow.sdk import ObjectStoragePath

            target = ObjectStoragePath(str(output_path))
            self.claims = Claims(target if is_folder(output_path) else target.parent, Owner.of_task(context))
            self.name = fingerprint if is_folder(output_path) else hashlib.sha256(
                f"{fingerprint}\0{target.name}".encode()).hexdigest()

    def begin(self) -> dict[str, Any] | None:
        """Record the intent; return the result an earlier try recorded for this edit, if any."""
        if self.claims is not None:
            try:
                self.claims.open()
            except OSError as err:
                raise CatalogStateError(f"output_path={str(self.output_path)!r} cannot hold the claim that keeps a "
                                        f"retry from paying twice ({type(err).__name__}: {err}); nothing was sent: "
                                        "point output_path at a folder (ending in /) or a file in one") from None
            self.opened = True
            self._claim()
            if self.charged is not None:
                return self.charged
            return None if self.force else find_stored_edit(self.output_path, self.fingerprint)  # stored meanwhile
        if self.store is None:
            return None
        prior = self.store.get(STATE_KEY)
        if isinstance(prior, dict) and prior.get("fingerprint") == self.fingerprint:
            if isinstance(prior.get("result"), dict):
                return dict(prior["result"])
            if not self.force:
                raise CutoutError(f"an earlier try of this task sent this edit at {prior.get('sent_at')} and ended "
                                  f"without recording its result: it {IN_DOUBT}", maybe_charged=True)
        self.store.set(STATE_KEY, {"fingerprint": self.fingerprint, "sent_at": time.strftime("%Y-%m-%d %H:%M:%S")})
        return None

    def _claim(self) -> None:
        assert self.claims is not None
        holder = self.claims.claim(self.name)
        if holder is None:
            return
        if self.claims.is_alive(holder):
            raise ClaimedElsewhereError(f"the same edit to {self.output_path} is being sent by {holder.describe()}; "
                                        "a retry returns its stored result")
        record = read_record(self.output_path, self.fingerprint, charged=not self.force)
        delivered = record is not None and bool(record.get("stored_path"))  # its file went away since
        if record is not None and not delivered:  # charged, its result URL recorded, never stored
            if self.claims.take_over(self.name, holder) is not None:
                raise ClaimedElsewhereError(f"another task took over the same edit to {self.output_path}; a retry "
                                            "returns its stored result")
            self.charged = record
            return
        if not (delivered or self.force):
            raise CutoutError(f"{holder.describe()} claimed this edit to {self.output_path} and ended without "
                              f"recording a result: it {IN_DOUBT}", maybe_charged=True)
        if self.claims.take_over(self.name, holder) is not None:
            raise ClaimedElsewhereError(f"another task took over the same edit to {self.output_path}; a retry "
                                        "returns its stored result")
        self.taken = not delivered
        if delivered:  # restoring a lost result: a kill from here on leaves it in doubt, not "delivered"
            forget_stored_edit(self.output_path, self.fingerprint)

    def sent(self, payload: dict[str, Any]) -> None:
        """The edit was charged and its result is known: a later try returns it (or, with ``output_path``, fetches
        and stores it) without paying."""
        if self.store is not None:
            self.store.set(STATE_KEY, {"fingerprint": self.fingerprint, "result": payload})
        elif self.claims is not None:
            try:
                remember_charged_edit(self.output_path, self.fingerprint, payload)
            except Exception:  # any store's error: the claim stays, a later try finds the edit in doubt, unpaid
                pass

    def failed(self, err: CutoutError) -> None:
        """The edit failed; when it charged nothing, a later try may send it again."""
        if err.maybe_charged or self.taken:
            return
        if self.claims is not None:
            self.claims.release(self.name)
        elif self.store is not None:
            self.store.delete(STATE_KEY)

    def close(self) -> None:
        """Stop the claim's heartbeat (the claim itself stays: it records that the edit was sent)."""
        if self.claims is not None and self.opened:
            self.claims.close()
