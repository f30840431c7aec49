"""Which DAG an output folder belongs to: ``<output_dir>/_cutout/owner.json``, signed (``state.signing``).

The first batch run that writes a folder records its DAG and task there, where the folder is (``location``, so a
record copied into another folder names the wrong place) and a random ``folder_id`` that every decision made in
the folder carries (so a decision copied from another folder is not taken). Of two first runs, one writes it (an
exclusive create). A run of another DAG is refused before it reads, writes or pays; the review view serves a folder
only to the task instances of the DAG its record names, and the gate publishes only from its own DAG's folder.
A run's folder can come from run conf (a ``params`` value), which whoever may trigger the DAG chooses: this record
is what keeps one DAG's trigger from reading or deciding in another's folder.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError
from airflow_provider_cutout.state.io import MAX_RECORD_BYTES, STATE_DIR, file_exists, is_local, read_file, write_whole
from airflow_provider_cutout.state.signing import OWNER, NoSecretError, sign, signed

NAME = "owner.json"


def owner_path(folder: Any) -> Any:
    return folder / STATE_DIR / NAME


def location(folder: Any) -> str:
    """Where the folder is, whatever it is called: a local folder's real path, else the store and its path (no
    connection id)."""
    if is_local(folder):
        return os.path.realpath(str(folder.path))
    return f"{folder.protocol}://{str(folder.path).strip('/')}"


def owner_of(folder: Any) -> dict[str, Any] | None:
    """The folder's owner record (``dag_id``, ``task_id``, ``folder_id``, ``location``, ``bound_at``) when it is
    there and signed; ``None`` when no run of this release wrote one. ``CatalogStateError`` when a record is there
    but not signed with this deployment's secret (written by hand, by another system, or under another secret)."""
    path = owner_path(folder)
    try:
        found = json.loads(read_file(path, MAX_RECORD_BYTES))
    except FileNotFoundError:
        return None
    except ValueError:
        found = None
    if not (signed(found, OWNER) and isinstance(found.get("dag_id"), str) and isinstance(found.get("folder_id"), str)):
        raise CatalogStateError(
            f"{path} does not name this folder's DAG in a record signed by this Airflow deployment (written by "
            "hand, by another system, or under another review secret): the folder is not used or shown. If the "
            "folder is this DAG's, delete that file; the next run records the DAG again.")
    return dict(found)


def owner_here(folder: Any) -> dict[str, Any] | None:
    """The owner record, if it is there, signed, and recorded for this very folder (a record copied from another
    folder, or a folder moved since, has none until its DAG runs there)."""
    found = owner_of(folder)
    return found if found is not None and found.get("location") == location(folder) else None


def bind(folder: Any, dag_id: str, task_id: str) -> dict[str, Any]:
    """Record ``dag_id`` as the folder's DAG, or check that it is; return the record. ``CatalogStateError`` naming
    the owner when the folder is another DAG's (nothing is sent). A record of this DAG made elsewhere (the folder
    moved, or its record copied) is made again for this place, with a new ``folder_id``: decisions made elsewhere
    do not follow it. ``NoSecretError`` when nothing can be signed and no record is there."""
    here, path = location(folder), owner_path(folder)
    for _ in range(3):
        try:
            owner = owner_of(folder)
        except NoSecretError:
            if file_exists(path):
                raise CatalogStateError(f"{path} records which DAG owns {folder}, and this process cannot check it: "
                                        "nothing is sent. Set [cutout] review_secret here as on the API server."
                                        ) from None
            raise
        if owner is not None and owner["dag_id"] != dag_id:
            raise CatalogStateError(
                f"output_dir={str(folder)!r} belongs to DAG {owner['dag_id']!r} (its task {owner.get('task_id')!r} "
                f"wrote it first), not to {dag_id!r}: nothing is sent. Give each DAG its own output_dir; a folder "
                "chosen in run conf must be one this DAG wrote. To hand the folder to this DAG, delete "
                f"{path}.")
        if owner is not None and owner.get("location") == here:
            return owner
        record = sign({"dag_id": dag_id, "task_id": task_id, "folder_id": uuid.uuid4().hex, "location": here,
                       "bound_at": time.time()}, OWNER)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_whole(path, json.dumps(record).encode(), exclusive=owner is None)
            return record
        except FileExistsError:  # another first run wrote it meanwhile: check whose it is
            continue
    raise CatalogStateError(f"{path} keeps changing: try again")
