"""A reviewer's decisions on items: entries of the manifest log, shown by ``read_manifest``, and a corrected
prompt that makes the next run edit that item again, and only it, once (the sandbox's ledger counts)."""

from __future__ import annotations

import pytest

from airflow_provider_cutout.manifest import read_manifest
from tests.conftest import states, xcoms
from tests.dags.batch_dags import catalog_chunks

ITEMS = [{"key": key, "image_urls": [f"/samples/mug.png?w={40 + i}&h=30"]} for i, key in enumerate("abcd")]


def open_manifest(folder):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.manifest import Manifest

    return Manifest(ObjectStoragePath(f"{folder}/"))


def decide(folder, key, decision, *, note="", prompt=None, by="rita"):
    manifest = open_manifest(folder)
    entry = read_manifest(folder)[key]
    asked = {"key": key, "fingerprint": entry["fingerprint"], "decision": decision, "by": by, "note": note}
    if prompt is not None:
        asked.update(prompt=prompt, replaces=manifest.replaced_prompt(entry))
    return manifest.decide(asked)


def edit_calls(sandbox, after: int) -> list[dict]:
    return [c for c in sandbox.ledger()["calls"] if c["seq"] > after and c["path"] == "edit"]


def test_a_corrected_prompt_edits_that_item_again_once_and_only_it(sandbox, airflow_db, tmp_path):
    conf = {"out": str(tmp_path), "items": ITEMS, "size": 2}  # two chunks: each reads its keys' decisions
    dr = catalog_chunks.test(run_conf=conf)
    assert states(dr)["batch"] == [("success", 1), ("success", 1)]
    assert sandbox.ledger()["charges"] == 4
    before = len(sandbox.ledger()["calls"])

    decide(tmp_path, "a", "rejected", note="the mug lost its handle", prompt="invert")
    decide(tmp_path, "b", "rejected", note="wrong colour")
    decide(tmp_path, "c", "approved")
    shown = read_manifest(tmp_path)
    assert shown["a"]["review"] == {"decision": "rejected", "by": "rita", "at": shown["a"]["review"]["at"],
                                    "note": "the mug lost its handle", "prompt": "invert"}
    assert shown["b"]["review"]["decision"] == "rejected" and "prompt" not in shown["b"]["review"]
    assert shown["c"]["review"]["decision"] == "approved" and "review" not in shown["d"]

    again = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["edited"] for r in again) == 1 and sum(r["credits_spent"] for r in again) == 4
    (call,) = edit_calls(sandbox, before)  # one charge: item a, with the corrected prompt
    assert call["operations"] == ["invert"] and sandbox.ledger()["charges"] == 5
    shown = read_manifest(tmp_path)
    assert shown["a"]["prompt"] == "invert" and "review" not in shown["a"]  # a new edit: to be reviewed again
    assert shown["b"]["review"]["decision"] == "rejected"  # stays rejected until decided again
    assert shown["c"]["review"]["decision"] == "approved"

    decide(tmp_path, "a", "approved", note="good now")  # approving keeps the correction: no edit back
    third = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["skipped"] for r in third) == 4 and sandbox.ledger()["charges"] == 5

    changed = [{**item, "prompt": "invert"} if item["key"] == "d" else item for item in ITEMS]
    changed[0] = {**changed[0], "prompt": "grayscale, sharper"}  # the DAG's own new prompt wins over a correction
    fourth = xcoms(catalog_chunks.test(run_conf={**conf, "items": changed}), "batch").values()
    assert sum(r["edited"] for r in fourth) == 2 and sandbox.ledger()["charges"] == 7
    assert read_manifest(tmp_path)["a"]["prompt"] == "grayscale, sharper"


def test_decisions_survive_compaction_and_stand_only_for_the_edit_they_were_made_on(tmp_path):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.manifest import Manifest

    folder = ObjectStoragePath(f"{tmp_path}/")
    writer = Manifest(folder, "run1")
    writer.record({"key": "k", "fingerprint": "f1", "status": "stored", "prompt": "p", "stored_path": "x"})
    writer.close()
    first = open_manifest(tmp_path).decide({"key": "k", "fingerprint": "f1", "decision": "rejected", "by": "a",
                                            "prompt": "p2", "replaces": "p"})
    second = open_manifest(tmp_path).decide({"key": "k", "fingerprint": "f1", "decision": "approved", "by": "b"})
    assert second["seq"] == first["seq"] + 1  # ordered by what each writer read, not by clocks
    with pytest.raises(ValueError, match="decision='maybe'"):
        open_manifest(tmp_path).decide({"key": "k", "fingerprint": "f1", "decision": "maybe"})

    writer = Manifest(folder, "run2")
    writer.record({"key": "k", "fingerprint": "f2", "status": "stored", "prompt": "p2", "stored_path": "x"})
    writer.close()
    writer.compact()  # one snapshot: edits and decisions
    assert [p.name for p in (tmp_path / "_cutout" / "manifest").glob("*.jsonl")] == [
        next(p.name for p in (tmp_path / "_cutout" / "manifest").glob("*snapshot*.jsonl"))]
    reader = open_manifest(tmp_path)
    assert reader.decisions["k"]["by"] == "b" and reader.corrections["k"]["prompt"] == "p2"
    assert reader.get("f1", "k")["status"] == "stored"  # a decision never replaces an edit's record
    (newest,) = reader.catalog()
    assert newest["fingerprint"] == "f2" and "review" not in newest  # made on f1: f2 awaits review
    assert reader.replaced_prompt(newest) == "p"  # a correction of f2 still replaces the item's own prompt
