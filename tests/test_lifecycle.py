"""The item's lifecycle table (catalog/lifecycle.py): every transition writes the record the table says, as
durably as it says, refuses a record missing what it needs, and is the only writer of records in a run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_cutout import exceptions as exc
from airflow_provider_cutout.catalog import lifecycle
from airflow_provider_cutout.manifest import read_manifest
from airflow_provider_cutout.state.manifest import Manifest
from tests.conftest import REPO

# name -> (status written, durable), restated here: a change to the table must be a change to this test too
EXPECTED = {
    "rejected": ("failed", False),
    "adopted": ("stored", False),
    "revalidated": ("stored", False),
    "resending": ("in_doubt", True),
    "charged": ("edited", True),
    "stored": ("stored", False),
    "paid_not_stored": ("edited", True),
    "in_doubt": ("in_doubt", True),
    "failed": ("failed", False),
    "holder_ended": ("in_doubt", False),
    "follower_in_doubt": ("in_doubt", False),
    "follower_failed": ("failed", False),
}
FULL = {"error": "why", "image_url": "https://r/1.png", "credits": 4, "stored_path": "/x/a.png", "sha256": "ab" * 32,
        "written_at": 1.0, "source_validators": ['"v2"']}


class Recording(Manifest):
    """The real manifest, remembering how durably each record was asked to be written."""

    durable: list[bool]

    def record(self, entry, *, durable=False):
        self.durable = [*getattr(self, "durable", []), durable]
        super().record(entry, durable=durable)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_transition_writes_its_record_as_durably_as_the_table_says(tmp_path, name):
    assert set(lifecycle.TRANSITIONS) == set(EXPECTED)
    folder = ObjectStoragePath(f"{tmp_path}/")
    manifest = Recording(folder, writer="t")
    transition = lifecycle.TRANSITIONS[name]
    fields = {field: FULL[field] for field in transition.requires}
    written = lifecycle.record(manifest, name, {"key": "a", "fingerprint": "f" * 64, "status": "planned"}, **fields)
    manifest.close()
    assert (written["status"], manifest.durable) == (EXPECTED[name][0], [EXPECTED[name][1]])
    assert read_manifest(folder)["a"]["status"] == EXPECTED[name][0]  # what the next run reads
    for field in transition.requires:  # a record without what it needs is a bug: refused, not written
        with pytest.raises(ValueError, match=field):
            lifecycle.record(Recording(folder, writer="u"), name, {"key": "b", "fingerprint": "e" * 64},
                             **{**fields, field: None})


@pytest.mark.parametrize(("entry", "err", "expected"), [
    ({"image_url": "u"}, exc.CutoutConnectionError("x", retryable=True), "paid_not_stored"),  # fetch it again
    ({"image_url": "u"}, exc.ResultDownloadError("expired", retryable=False), "in_doubt"),  # paid, result gone
    ({}, exc.ServerError("504", maybe_charged=True, retryable=False), "in_doubt"),  # maybe charged
    ({}, exc.CutoutTimeoutError("t", maybe_charged=True, retryable=True), "failed"),  # resending allowed
    ({"taken_over": True}, exc.FailedEditError("no", retryable=False), "in_doubt"),  # the dead owner may have paid
    ({}, exc.FailedEditError("no", retryable=False), "failed"),  # free
])
def test_a_failure_is_recorded_by_what_it_may_have_cost(entry, err, expected):
    assert lifecycle.failure(entry, err) == expected


def test_the_run_writes_records_only_through_the_lifecycle():
    catalog = REPO / "airflow_provider_cutout" / "catalog"
    sources = {path.name: path.read_text() for path in catalog.glob("*.py")}
    writers = [name for name, text in sources.items() if re.search(r"manifest\.record\(", text)]
    assert writers == ["lifecycle.py"]
    named = set(re.findall(r"""lifecycle\.record\([^,]+, "(\w+)\"""", "".join(sources.values())))
    used = named | {lifecycle.failure({"image_url": "u"}, exc.ResultDownloadError("x", retryable=True)), "in_doubt",
                    "failed"}  # the three that lifecycle.fail picks
    assert used == set(EXPECTED), set(EXPECTED) ^ used
    assert Path(lifecycle.__file__).parent == catalog
