"""``CutoutReviewGateOperator``: after a batch run, wait for a reviewer, then hand on what may be published."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

from airflow_provider_cutout.exceptions import InvalidInputError, ReviewRejectedError, fail_or_retry
from airflow_provider_cutout.observability.links import review_url
from airflow_provider_cutout.state.binding import owner_here
from airflow_provider_cutout.state.decisions import APPROVED, REJECTED
from airflow_provider_cutout.state.manifest import STORED
from airflow_provider_cutout.texts import plural

if TYPE_CHECKING:
    from airflow.sdk import Context

PUBLISH_ALL_BUT_REJECTED = "Publish all but rejected"
PUBLISH_APPROVED = "Publish approved only"
REJECT_RUN = "Reject run"
OPTIONS = [PUBLISH_APPROVED, PUBLISH_ALL_BUT_REJECTED, REJECT_RUN]


class CutoutReviewGateOperator(HITLOperator):
    """Wait for a reviewer after a ``CutoutBatchImageEditOperator`` run, then return what may be published.

    A human-in-the-loop task (Airflow's ``HITLOperator``): it asks in Airflow's UI ("Required actions"), with
    the batch run's counts and credits in its subject and a link to the run's "Cutout review" view, where the
    reviewer approves or rejects items first. The options:

    - ``Publish approved only`` (the primary button, and the answer when ``response_timeout`` passes, by default):
      the stored items a reviewer approved;
    - ``Publish all but rejected``: every stored item without a standing rejection;
    - ``Reject run``: nothing; the gate fails, so the run shows as failed and the publishing task does not run.

    Returns ``{"decision", "approved": [{"key", "path", "fingerprint", "sha256"}], "rejected": [keys],
    "undecided": [keys], "not_stored": [keys], "changed": [keys], "unverified": [keys], "responded_by"}`` for the
    publishing task (``undecided``: stored items nobody decided on, published only under "Publish all but
    rejected"; ``unverified``: a decision line on the item could not be trusted, so it is held back unless an
    approval stands): ``path`` is each approved
    item's stored result, ``sha256`` its digest (check it when copying: a run that overlaps could replace the file).
    Only what the reviewer could have seen passes: an item edited again after the gate asked is held back in
    ``changed`` (the edit the gate asked about is recorded in its XCom ``reviewed_edits``).

    :param batch_task_id: the batch task of this DAG run (mapped or not): its summary gives the output folder,
        the counts and the credits.
    :param items: the items (dicts with ``key``, or keys) to decide for, templated; by default every item the
        output folder's manifest holds. Pass the batch's own ``items`` when items leave the catalog over time.
    :param output_dir: the batch's output folder; by default the one its summary names.
    :param response_timeout: how long to wait for a reviewer (24 hours by default), then ``defaults``.
    :param defaults: the option drawn as the primary button and taken on timeout (``Publish approved only``:
        nothing that nobody approved is published; ``Reject run`` publishes nothing on timeout).
    """

    # (batch_task_id too: rendered, the review view's tab of a gate links to its batch's view)
    template_fields: Sequence[str] = (*HITLOperator.template_fields, "items", "output_dir", "batch_task_id")

    def __init__(self, *, batch_task_id: str, items: Any = None, output_dir: str | None = None,
                 subject: str | None = None, body: str | None = None, options: list[str] | None = None,
                 defaults: str | list[str] | None = PUBLISH_APPROVED,
                 response_timeout: timedelta | None = timedelta(hours=24), **kwargs: Any) -> None:
        chosen = list(options or OPTIONS)
        if not set(chosen) <= set(OPTIONS):
            raise InvalidInputError(f"options={chosen!r}: each must be one of {OPTIONS}")
        super().__init__(subject=subject or f"Review the Cutout edits of {batch_task_id}", body=body,
                         options=chosen, defaults=defaults, response_timeout=response_timeout, **kwargs)
        self.batch_task_id, self.items, self.output_dir = batch_task_id, items, output_dir
        self._custom_subject, self._custom_body = subject is not None, body is not None

    def execute(self, context: Context) -> Any:
        summaries = self._summaries(context)
        if not summaries:
            raise InvalidInputError(f"batch_task_id={self.batch_task_id!r} left no summary in this DAG run: "
                                    "name the CutoutBatchImageEditOperator task that runs before this gate")
        folder = self._folder(summaries, context)
        total = {name: sum(int(s.get(name) or 0) for s in summaries)
                 for name in ("total", "edited", "skipped", "failed", "in_doubt", "credits_spent")}
        if not self._custom_subject:
            self.subject = (f"Review {total['total']:,} Cutout items: {total['edited']:,} edited this run, "
                            f"{total['failed']:,} failed, {total['credits_spent']:,} credits")
        if not self._custom_body:
            ti = context["ti"]
            link = review_url(ti.dag_id, ti.run_id, self.batch_task_id, 0 if len(summaries) > 1 else -1)
            self.body = (f"Look at the edits in the [Cutout review view]({link}) of {markdown(self.batch_task_id)} "
                         "(the link opens it full page; it is also a tab of that task instance): approve or reject "
                         "items there, failed items first (a rejected item with a corrected prompt is edited again "
                         "by the next run). Then choose what to publish: \"Publish approved only\" publishes only "
                         "what a reviewer approved, \"Publish all but rejected\" also what nobody decided on. "
                         f"This run: {total['edited']:,} edited, {total['skipped']:,} unchanged, "
                         f"{total['failed']:,} failed, {total['in_doubt']:,} in doubt; output folder "
                         f"{markdown(str(folder))}.")
        reviewed = {key: [entry.get("fingerprint"), entry.get("sha256")]
                    for key, entry in _scope(folder, self.items)[0] if entry is not None}
        context["ti"].xcom_push(key="reviewed_edits", value=reviewed)
        return super().execute(context)

    def _folder(self, summaries: list[dict[str, Any]], context: Context) -> Any:
        """The output folder: ``output_dir``, else the one the batch's summary names; refused unless it belongs to
        this DAG (``state.binding``: run conf may name any folder)."""
        from airflow.sdk import ObjectStoragePath

        folder = self.output_dir or next((s.get("output_dir") for s in summaries), None)
        dag_id = context["ti"].dag_id
        owner = owner_here(ObjectStoragePath(str(folder).rstrip("/") + "/")) if folder else None
        if owner is None or owner["dag_id"] != dag_id:
            raise InvalidInputError(
                f"output_dir={str(folder)[:300]!r} is not a folder of DAG {dag_id!r} (it names "
                f"{(owner or {}).get('dag_id')!r}): the gate publishes only what this DAG's batch wrote. Pass the "
                "batch's own output_dir, or none.")
        return folder

    def _summaries(self, context: Context) -> list[dict[str, Any]]:
        found = context["ti"].xcom_pull(task_ids=self.batch_task_id)
        if isinstance(found, dict):
            return [found]
        return [s for s in (found or []) if isinstance(s, dict)]

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        answer = super().execute_complete(context, event)
        choice = (answer["chosen_options"] or [REJECT_RUN])[0]
        ti = context["ti"]
        reviewed = ti.xcom_pull(task_ids=self.task_id, key="reviewed_edits", map_indexes=ti.map_index) or {}
        result = publishable(self._folder(self._summaries(context), context), choice, self.items,
                             reviewed=reviewed)
        result["responded_by"] = answer.get("responded_by_user")
        who = (result["responded_by"] or {}).get("name") if isinstance(result["responded_by"], dict) else None
        self.log.info("Cutout review gate: %s (%s): %s to publish; held back: %d rejected, %d undecided, %d not "
                      "stored, %d edited again since the gate asked, %d with a decision that could not be trusted",
                      choice, f"by {who}" if who else "nobody answered in time: the default",
                      plural(len(result["approved"]), "item"), len(result["rejected"]),
                      0 if choice == PUBLISH_ALL_BUT_REJECTED else len(result["undecided"]),
                      len(result["not_stored"]), len(result["changed"]), len(result["unverified"]))
        if result["undecided"]:
            self.log.info("Cutout review gate: undecided: %s", ", ".join(map(str, result["undecided"][:50])))
        if choice == REJECT_RUN:
            fail_or_retry(ReviewRejectedError(
                f"the review of {self.batch_task_id} was rejected ({f'by {who}' if who else 'on timeout'}): "
                f"nothing is published; {len(result['rejected'])} items rejected, {len(result['undecided'])} "
                "undecided"), self.log)
        return result


def publishable(output_dir: Any, choice: str, items: Any = None, *,
                reviewed: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a gate's ``choice`` lets through from the catalog of ``output_dir``.

    :param items: the items to decide for (dicts with ``key``, keys, or chunks of them); ``None``: every item the
        manifest holds. An item without an entry counts as not stored.
    :param reviewed: the edit (fingerprint) of each key when the gate asked: a key edited again since is held back.
    """
    approved, rejected, undecided, not_stored, changed, unverified = [], [], [], [], [], []
    scope, left_out = _scope(output_dir, items)
    for key, entry in scope:
        decision = ((entry or {}).get("review") or {}).get("decision")
        if entry is None or entry.get("status") != STORED or not entry.get("sha256"):
            not_stored.append(key)  # no result, or none whose digest is recorded: nothing to check a copy by
        elif reviewed is not None and not _same_edit(reviewed.get(key), entry):
            changed.append(key)
        elif decision == REJECTED:
            rejected.append(key)
        elif key in left_out and decision != APPROVED:  # a decision line that could not be trusted (a rejection?)
            unverified.append(key)
        else:
            if decision != APPROVED:
                undecided.append(key)
            if choice == PUBLISH_ALL_BUT_REJECTED or (choice == PUBLISH_APPROVED and decision == APPROVED):
                approved.append({"key": key, "path": entry.get("stored_path"),
                                 "fingerprint": entry.get("fingerprint"), "sha256": entry.get("sha256")})
    return {"decision": choice, "approved": approved, "rejected": rejected, "undecided": undecided,
            "not_stored": not_stored, "changed": changed, "unverified": unverified}


def _same_edit(asked: Any, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` is the edit and the image the gate asked about (``[fingerprint, sha256]``; a fingerprint
    alone from a gate of an earlier release)."""
    if isinstance(asked, list | tuple) and len(asked) == 2:
        return [entry.get("fingerprint"), entry.get("sha256")] == list(asked)
    return bool(asked == entry.get("fingerprint"))


def markdown(text: str) -> str:
    """``text`` as literal Markdown text (the gate's body is rendered as Markdown): every character that could
    start markup is escaped, and line breaks are spaces."""
    text = " ".join(text.split())
    return "".join(f"\\{c}" if c in _MARKDOWN else c for c in text)


_MARKDOWN = set("\\`*_{}[]()<>#+-.!|~&:\"'=")


def _scope(output_dir: Any, items: Any) -> tuple[list[tuple[Any, dict[str, Any] | None]], set[Any]]:
    """Each item key to decide for, with its newest manifest entry (``None`` when it has none); and the keys that
    decision lines left out (unsigned, changed, from another folder) name."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.manifest import Manifest, by_key_here

    folder = ObjectStoragePath(str(output_dir).rstrip("/") + "/")
    manifest = Manifest(folder)
    catalog = by_key_here(manifest, folder)
    scope = [(key, catalog.get(key)) for key in (list(catalog) if items is None else _keys(items))]
    texts = collections.Counter(str(key) for key in catalog)  # 1 and "1" (written by hand): the view decides neither
    return scope, manifest.decisions.unverified | {key for key in catalog if texts[str(key)] > 1}


def _keys(items: Any) -> list[Any]:
    """The item keys of ``items``: dicts with ``key``, keys, or lists of them (the chunks of a mapped batch)."""
    found: list[Any] = []
    for item in items:
        if isinstance(item, list | tuple):
            found.extend(_keys(item))
        else:
            found.append(item.get("key") if isinstance(item, dict) else item)
    return found
