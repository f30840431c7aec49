"""Edits stored under an earlier fingerprint of the same edit: before source versions counted (or with source
checks off), or under the legacy versions of releases before sources were hashed whole. Taken as unchanged
once, and recorded under the fingerprint of now, so a later change of the photo is edited again. One rule for
both stores (the batch's manifest, the single edit's records)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Entry = dict[str, Any]


def adopt_earlier(fingerprint: str, earlier: str, versions: Sequence[str],
                  get: Callable[[str], Entry | None], put: Callable[[str, Entry], None],
                  validators: Sequence[str] = ()) -> Entry | None:
    """The stored entry of ``earlier`` recorded anew under ``fingerprint``, or ``None``.

    :param fingerprint: the edit's fingerprint with its sources' versions.
    :param earlier: the same edit's earlier fingerprint (without versions, or with legacy ones).
    :param versions: the sources' versions (none: nothing to adopt).
    :param get: the stored entry of a fingerprint, if any.
    :param put: records an entry under a fingerprint.
    :param validators: what asks the sources' servers whether they changed (recorded with the versions).
    """
    old = get(earlier) if versions else None
    if old is None or old.get("adopted_by"):
        return None  # adopted once already: a new version now is a changed photo
    written = old.get("written_at") or old.get("updated_at")  # recorded anew, the file is not written again
    adopted = {**{k: v for k, v in old.items() if k != "adopted_by"}, "fingerprint": fingerprint,
               "source_versions": list(versions), "source_validators": list(validators), "written_at": written}
    put(fingerprint, adopted)
    put(earlier, {**old, "adopted_by": fingerprint, "written_at": written})
    return adopted
