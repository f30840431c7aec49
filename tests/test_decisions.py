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


def decide(folder, key, decision, *, note="", prompt=None, by="rita", fingerprint=None):
    entry = read_manifest(folder)[key]
    asked = {"key": key, "fingerprint": fingerprint or entry["fingerprint"], "sha256": entry.get("sha256"),
             "decision": decision, "by": by, "note": note}
    if prompt is not None:
        asked.update(prompt=prompt, replaces=entry.get("own_prompt") or entry["prompt"], edited=entry["prompt"])
    return open_manifest(folder).decisions.decide(asked)


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

    decide(tmp_path, "a", "rejected", prompt="invert, grayscale")  # a second correction, then a change of mind:
    decide(tmp_path, "a", "approved")  # the first correction stands again, so the stored edit is what is asked for
    fourth = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["skipped"] for r in fourth) == 4 and sum(r["restored"] for r in fourth) == 0
    assert sandbox.ledger()["charges"] == 5 and read_manifest(tmp_path)["a"]["review"]["decision"] == "approved"

    changed = [{**item, "prompt": "invert"} if item["key"] == "d" else item for item in ITEMS]
    changed[0] = {**changed[0], "prompt": "grayscale, sharper"}  # the DAG's own new prompt wins over a correction
    fifth = xcoms(catalog_chunks.test(run_conf={**conf, "items": changed}), "batch").values()
    assert sum(r["edited"] for r in fifth) == 2 and sandbox.ledger()["charges"] == 7
    assert read_manifest(tmp_path)["a"]["prompt"] == "grayscale, sharper"


def test_approving_the_edit_a_correction_was_made_on_withdraws_the_correction(sandbox, airflow_db, tmp_path):
    conf = {"out": str(tmp_path), "items": ITEMS, "size": 4}
    catalog_chunks.test(run_conf=conf)
    decide(tmp_path, "a", "rejected", prompt="invert")
    decide(tmp_path, "a", "approved", note="fine after all")  # a change of mind on the same edit
    again = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["skipped"] for r in again) == 4 and sandbox.ledger()["charges"] == 4


def stored(folder, key, fingerprint, prompt="p", **more):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.binding import bind
    from airflow_provider_cutout.state.manifest import Manifest

    bind(ObjectStoragePath(f"{folder}/"), "t_unit", "batch")  # as the DAG's run does first
    writer = Manifest(ObjectStoragePath(f"{folder}/"), f"run-{fingerprint}")
    writer.record({"key": key, "fingerprint": fingerprint, "status": "stored", "prompt": prompt,
                   "stored_path": f"{folder}/{key}.png", **more})
    writer.close()


def test_decisions_live_apart_from_the_edits_log_and_stand_only_for_their_edit(tmp_path):
    import json

    stored(tmp_path, "k", "f1")
    first = decide(tmp_path, "k", "rejected", prompt="p2", by="a")
    second = decide(tmp_path, "k", "rejected", by="b")
    assert second["seq"] == first["seq"] + 1  # ordered by what each writer read, not by clocks
    state = tmp_path / "_cutout"
    assert len(list((state / "decisions").glob("*.jsonl"))) == 2
    logged = [json.loads(line) for p in (state / "manifest").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert logged and not any("decision" in entry for entry in logged)  # 0.2's readers never meet one
    reader = open_manifest(tmp_path)
    assert reader.get("f1", "k")["status"] == "stored" and reader.decisions.correction("k")["prompt"] == "p2"

    stored(tmp_path, "k", "f2", prompt="p2", own_prompt="p")  # the corrected edit
    (entry,) = open_manifest(tmp_path).catalog()
    assert entry["fingerprint"] == "f2" and "review" not in entry  # made on f1: f2 awaits review
    decide(tmp_path, "k", "approved", by="c")  # on f2: the correction stands (its edit, f1, stays rejected)
    assert open_manifest(tmp_path).decisions.correction("k")["prompt"] == "p2"
    third = decide(tmp_path, "k", "rejected", prompt="p3", by="d")  # a second correction still replaces p
    assert third["replaces"] == "p" and open_manifest(tmp_path).decisions.correction("k")["prompt"] == "p3"
    decisions = open_manifest(tmp_path).decisions
    assert decisions.applies("k", "p")["prompt"] == "p3"
    assert decisions.applies("k", "p2")["prompt"] == "p3"  # a DAG that took the first correction in as its own
    assert decisions.applies("k", "p-new") is None  # the DAG's own new prompt wins

    decide(tmp_path, "k", "approved", by="e")  # a change of mind on f2: the second correction is withdrawn...
    decisions = open_manifest(tmp_path).decisions
    assert decisions.correction("k")["prompt"] == "p2"  # ...and the first, on f1 (still rejected), stands again
    assert decisions.applies("k", "p")["prompt"] == "p2"  # so the next run asks for f2 again: stored, skipped


def test_a_run_folds_many_decision_files_into_one_snapshot_and_keeps_every_standing_one(tmp_path):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state.decisions import DECISION_FILES
    from airflow_provider_cutout.state.manifest import Manifest

    for i in range(DECISION_FILES + 1):
        stored(tmp_path, f"k{i}", f"f{i}")
    decide(tmp_path, "k0", "rejected", prompt="p2")
    decide(tmp_path, "k0", "rejected", note="still wrong")  # newer, without a prompt: the correction is older
    for i in range(1, DECISION_FILES + 1):
        decide(tmp_path, f"k{i}", "approved")
    writer = Manifest(ObjectStoragePath(f"{tmp_path}/"), "run-x")
    writer.close()
    files = list((tmp_path / "_cutout" / "decisions").glob("*.jsonl"))
    assert len(files) == 1 and files[0].name.startswith("snapshot-")
    reader = open_manifest(tmp_path).decisions
    assert reader.on("f0", "k0")["note"] == "still wrong" and reader.correction("k0")["prompt"] == "p2"
    assert all(reader.on(f"f{i}", f"k{i}")["decision"] == "approved" for i in range(1, DECISION_FILES + 1))


def test_damaged_decision_lines_are_left_out_and_a_tie_is_settled_for_the_rejection(tmp_path):
    import json

    from airflow_provider_cutout.state.signing import DECISION, sign

    stored(tmp_path, "k", "f1")
    folder = tmp_path / "_cutout" / "decisions"
    folder.mkdir(parents=True)
    good = {"key": "k", "fingerprint": "f1", "by": "x", "updated_at": 5}
    lines = [{**good, "decision": "approved", "seq": 1, "updated_at": 9},  # a skewed clock: later, but a tie
             {**good, "decision": "rejected", "seq": 1},
             {**good, "decision": None, "seq": 7}, {**good, "decision": "approved", "seq": "x", "updated_at": "soon"},
             {**good, "decision": "approved", "fingerprint": None, "seq": 9},
             {**good, "decision": "rejected", "prompt": 3, "replaces": "p", "seq": 9}]
    folder_id = open_manifest(tmp_path).decisions.folder_id()
    lines = [sign({**line, "folder_id": folder_id}, DECISION) for line in lines]  # by the view, damaged since
    lines.append({**good, "decision": "approved", "seq": 99})  # not signed: a forgery, however new its seq
    lines.append({**lines[0], "seq": 98})  # signed once, changed since
    lines.append(sign({**good, "decision": "approved", "seq": 97, "folder_id": "f" * 32}, DECISION))  # elsewhere
    (folder / "hand.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\nnot json\n")
    reader = open_manifest(tmp_path).decisions
    assert reader.on("f1", "k")["decision"] == "rejected"  # "seq": "x" reads as 0, the rest are left out
    assert reader.left_out == 7 and reader.correction("k") is None and reader.unverified == {"k"}
    assert sum("not signed by the review view" in problem for problem in reader.problems) == 2  # 5 shown of 7
    reader.decide({"key": "k", "fingerprint": "f1", "decision": "rejected", "by": "y"})
    reader.compact()
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == ["hand.jsonl", "snapshot"]  # kept to inspect
    with pytest.raises(ValueError, match="not a decision"):
        reader.decide({"key": "k", "fingerprint": "f1", "decision": "maybe"})


def test_the_gate_passes_only_what_was_reviewed(tmp_path):
    from airflow_provider_cutout.operators.review_gate import (
        PUBLISH_ALL_BUT_REJECTED,
        PUBLISH_APPROVED,
        REJECT_RUN,
        publishable,
    )

    for key in "abcd":
        stored(tmp_path, key, f"{key}1", sha256=f"sha-{key}")
    decide(tmp_path, "a", "rejected")
    decide(tmp_path, "b", "approved")
    reviewed = {key: [f"{key}1", f"sha-{key}"] for key in "abcd"}
    reviewed["d"] = "d1"  # a gate of an earlier release recorded the fingerprint only
    stored(tmp_path, "c", "c2", sha256="sha-c2")  # edited again by an overlapping run after the gate asked
    chunks = [[{"key": "a"}, {"key": "b"}], [{"key": "c"}, {"key": "d"}, {"key": "gone"}]]  # a mapped batch's items
    result = publishable(tmp_path, PUBLISH_ALL_BUT_REJECTED, chunks, reviewed=reviewed)
    assert [(i["key"], i["sha256"]) for i in result["approved"]] == [("b", "sha-b"), ("d", "sha-d")]
    assert (result["rejected"], result["changed"], result["not_stored"]) == (["a"], ["c"], ["gone"])
    assert result["undecided"] == ["d"]  # published under "all but rejected", and named
    only_approved = publishable(tmp_path, PUBLISH_APPROVED, chunks, reviewed=reviewed)
    assert [i["key"] for i in only_approved["approved"]] == ["b"] and only_approved["undecided"] == ["d"]
    assert publishable(tmp_path, REJECT_RUN, chunks, reviewed=reviewed)["approved"] == []
    decide(tmp_path, "a", "approved", fingerprint="a1")  # a change of mind
    assert "a" in [i["key"] for i in publishable(tmp_path, PUBLISH_APPROVED)["approved"]]
    stored(tmp_path, "b", "b1", sha256="sha-b-new")  # b's file lost, edited again: the same edit, another image
    assert "b" not in [i["key"] for i in publishable(tmp_path, PUBLISH_APPROVED)["approved"]]
    stored(tmp_path, "e", "e1")  # a result without a recorded digest: nothing to check a copy by
    assert "e" in publishable(tmp_path, PUBLISH_ALL_BUT_REJECTED)["not_stored"]


def test_without_a_review_secret_nothing_is_signed_and_a_recorded_owner_is_not_passed_unchecked(tmp_path, monkeypatch):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.exceptions import CatalogStateError
    from airflow_provider_cutout.state import signing
    from airflow_provider_cutout.state.binding import bind

    stored(tmp_path, "k", "f1", sha256="s")  # bound, with the secret
    decide(tmp_path, "k", "approved")

    def none() -> bytes:
        raise signing.NoSecretError(f"Cutout review: {signing.NO_SECRET}")

    monkeypatch.setattr(signing, "_secret", none)
    with pytest.raises(CatalogStateError, match="cannot check it: nothing is sent"):
        bind(ObjectStoragePath(f"{tmp_path}/"), "t_unit", "batch")  # a recorded owner, not checkable here
    with pytest.raises(signing.NoSecretError, match="review_secret"):
        bind(ObjectStoragePath(f"{tmp_path}/fresh/"), "t_unit", "batch")  # the operator warns and goes on
    with pytest.raises(signing.NoSecretError):
        read_manifest(tmp_path)  # decisions that cannot be checked are not taken as none
