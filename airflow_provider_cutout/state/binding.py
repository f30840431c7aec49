"""Which DAG an output folder belongs to: ``<output_dir>/_cutout/owner.json``, signed (``state.signing``).

The first batch run that writes a folder records its DAG and task there (an exclusive create: of two first
runs, one writes it); a run of another DAG is refused before it pays, and the review view serves a folder only to
the task instances of the DAG it names. A run's folder can come from run conf (a ``params`` value), which whoever
may trigger the DAG chooses; this record is what keeps one DAG's trigger from reading or deciding in another's
folder.
"""

from __future__ import annotations

import json
import time
from typing import Any

from airflow_provider_cutout.exceptions import CatalogStateError
from airflow_provider_cutout.state.io import MAX_RECORD_BYTES, STATE_DIR, read_file, write_whole
from airflow_provider_cutout.state.signing import OWNER, sign, signed

NAME = "owner.json"


def owner_path(folder: Any) -> Any:
    return folder / STATE_DIR / NAME


def owner_of(folder: Any) -> dict[str, Any] | None:
    """The DAG and task the folder belongs to (``dag_id``, ``task_id``, ``bound_at``); ``None`` when no run of this
    release wrote it yet. ``CatalogStateError`` when the record is there but not signed with this deployment's
    secret (written by hand, by a task, or by another Airflow)."""
    path = owner_path(folder)
    try:
        found = json.loads(read_file(path, MAX_RECORD_BYTES))
    except FileNotFoundError:
        return None
    except ValueError:
        found = None
    if not (signed(found, OWNER) and isinstance(found.get("dag_id"), str)):
        raise CatalogStateError(
            f"{path} does not name this folder's DAG in a record signed by this Airflow deployment (written by "
            "hand, by a task, or under another [api_auth] jwt_secret): the folder is not used or shown. If the "
            "folder is this DAG's, delete that file; the next run records the DAG again.")
    return dict(found)


def bind(folder: Any, dag_id: str, task_id: str) -> None:
    """Record ``dag_id`` as the folder's DAG, or check that it is (``CatalogStateError`` naming the owner when it
    is another DAG's: nothing is sent)."""
    for _ in range(2):
        owner = owner_of(folder)
        if owner is not None:
            if owner["dag_id"] != dag_id:
                raise CatalogStateError(
                    f"output_dir={str(folder)!r} belongs to DAG {owner['dag_id']!r} (its task "
                    f"{owner.get('task_id')!r} wrote it first), not to {dag_id!r}: nothing is sent. Give each DAG "
                    "its own output_dir; a folder chosen in run conf must be one this DAG wrote.")
            return
        record = sign({"dag_id": dag_id, "task_id": task_id, "bound_at": time.time()}, OWNER)
        path = owner_path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_whole(path, json.dumps(record).encode(), exclusive=True)
            return
        except FileExistsError:  # another first run wrote it meanwhile: check whose it is
            continue
    raise CatalogStateError(f"{owner_path(folder)} keeps changing: try again")
