"""CutoutBatchImageEditOperator through real Airflow runs against the sandbox and its ledger."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from airflow_provider_cutout import exceptions as exc
from airflow_provider_cutout.catalog.plan import file_stem
from airflow_provider_cutout.manifest import read_manifest
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator, chunk_items
from tests.conftest import calls_and_charges, charges_per_edit, hand_over, manifest_entries, states, xcoms
from tests.dags.batch_dags import batch, budget, catalog_chunks, slow, templated


def summary(dr):
    return xcoms(dr, "batch")[-1]


def test_200_items_rerun_free_and_one_change(sandbox, airflow_db, tmp_path, capfd):
    sandbox.reset(balance=5000)
    conf = {"n": 200, "out": str(tmp_path), "changed": "", "invalid": False}
    first = summary(batch.test(run_conf=conf))
    assert first["edited"] == 200 and first["failed"] == 0 and first["credits_spent"] == 800
    assert len(list(tmp_path.glob("item-*.png"))) == 200
    entries = manifest_entries(tmp_path)
    assert len(entries) == 200 and {e["status"] for e in entries.values()} == {"stored"}
    ledger = sandbox.ledger()
    assert ledger["charges"] == 200 and all(v["charges"] == 1 for v in ledger["by_fingerprint"].values())
    log = capfd.readouterr()
    assert "Cutout batch progress: 200/200 done" in log.out + log.err

    second = summary(batch.test(run_conf=conf))
    assert second["skipped"] == 200 and second["edited"] == 0 and second["credits_spent"] == 0
    assert sandbox.ledger()["charges"] == 200  # nothing charged

    third = summary(batch.test(run_conf={**conf, "changed": "item-7"}))
    assert third["edited"] == 1 and third["skipped"] == 199 and third["credits_spent"] == 4
    ledger = sandbox.ledger()
    assert ledger["charges"] == 201
    (new_call,) = [c for c in ledger["calls"] if c["seq"] > 200 and c["path"] == "edit"]
    assert new_call["operations"] == ["invert"]
    assert len(list(tmp_path.glob("item-*.png"))) == 200  # item-7 replaced, not duplicated


def test_budget_exceeded_fails_with_zero_calls(sandbox, airflow_db, tmp_path, capfd):
    dr = budget.test(run_conf={"n": 5, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("failed", 1)]
    assert sandbox.ledger()["calls"] == []
    log = capfd.readouterr()
    assert "planned cost is 20 credits for 5 edits, over max_credits=10" in log.out + log.err


def test_invalid_items_reported_together(sandbox, airflow_db, tmp_path, capfd):
    dr = batch.test(run_conf={"n": 3, "out": str(tmp_path), "changed": "", "invalid": True})
    assert states(dr)["batch"] == [("failed", 1)]
    assert sandbox.ledger()["calls"] == []
    text = "".join(capfd.readouterr())
    assert "3 of 6 items are invalid; nothing was sent" in text
    assert "item 'bad-model': model='gpt-9'" in text and "item 'bad-url'" in text and "items[5]: key=None" in text


def test_insufficient_credits_stops_the_batch(sandbox, airflow_db, tmp_path, capfd):
    sandbox.reset(balance=20)
    sandbox.server.state.config.latency = 0.05
    dr = slow.test(run_conf={"n": 40, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("failed", 1)]
    ledger = sandbox.ledger()
    assert ledger["charges"] == 5
    assert ledger["edit_calls"] <= 5 + 4  # stopped at once: at most the calls already in flight
    entries = manifest_entries(tmp_path)
    assert sum(e["status"] == "stored" for e in entries.values()) == 5
    assert "the batch stopped at once" in "".join(capfd.readouterr())


def test_budget_and_failures_from_run_conf_are_validated_after_rendering(sandbox, airflow_db, tmp_path, capfd):
    conf = {"n": 5, "out": str(tmp_path), "changed": "", "invalid": False}
    over = templated.test(run_conf={**conf, "max_credits": 10})
    assert states(over)["batch"] == [("failed", 1)] and sandbox.ledger()["calls"] == []
    assert "planned cost is 20 credits for 5 edits, over max_credits=10" in "".join(capfd.readouterr())

    bad = templated.test(run_conf={**conf, "max_credits": "ten", "max_failures": 2.5})
    assert states(bad)["batch"] == [("failed", 1)] and sandbox.ledger()["calls"] == []
    text = "".join(capfd.readouterr())
    assert "max_credits='ten': input should be a valid integer" in text  # every bad argument in one error
    assert "max_failures='2.5': must be a count (0, 1, 2...) or a fraction below 1" in text

    enough = summary(templated.test(run_conf={**conf, "max_credits": 20, "max_failures": "0.5"}))
    assert enough["edited"] == 5 and charges_per_edit(sandbox) == [1] * 5


@pytest.mark.parametrize(("arguments", "named"), [
    ({"max_concurrency": 0}, ["max_concurrency=0"]),
    ({"max_failures": 1.5}, [r"max_failures=1\.5"]),
    ({"resend_in_doubt": "yes"}, ["resend_in_doubt='yes': must be True, False"]),
    ({"resend_in_doubt": ["a", 3]}, [r"resend_in_doubt=\['a', 3\]: must be True, False, or a list of item keys"]),
    ({"check_balance": 1, "heartbeat_timeout": True, "max_credits": -1},
     ["check_balance=1", "heartbeat_timeout=True", "max_credits=-1"]),
    ({"gallery_link_expiry": 0, "requests_per_second": "fast"},
     ["gallery_link_expiry=0", "requests_per_second='fast'"]),
    ({"max_concurrency": "{{ params.n }}"}, [r"max_concurrency='\{\{ params.n \}\}'"]),  # not templated: refused
    ({"max_credits": ""}, ["max_credits=''"]),  # an empty text is no budget: refused, never "no limit"
])
def test_operator_argument_checks(arguments, named):
    with pytest.raises(ValueError) as raised:
        CutoutBatchImageEditOperator(task_id="b", items=[], output_dir="/tmp/x/", **arguments)
    for pattern in named:
        assert re.search(pattern, str(raised.value)), str(raised.value)


def test_templated_arguments_wait_for_rendering_and_texts_parse_strictly():
    op = CutoutBatchImageEditOperator(task_id="b", items=[], output_dir="/tmp/x/", max_credits="{{ params.c }}",
                                      resend_in_doubt="{{ params.r }}", max_failures="{{ params.f }}")
    op.max_credits, op.resend_in_doubt, op.max_failures = "120", "False", "0.05"  # as Jinja renders them
    config = op.run_config()
    assert (config.max_credits, config.resend_in_doubt, config.max_failures) == (120, False, 0.05)
    op.max_credits, op.resend_in_doubt, op.max_failures = "None", " TRUE ", "3"
    config = op.run_config()
    assert (config.max_credits, config.resend_in_doubt, config.max_failures) == (None, True, 3)
    quiet = CutoutBatchImageEditOperator(task_id="q", items=[], output_dir="/tmp/x/", progress_interval=None,
                                         gallery=None, check_balance=None).run_config()
    assert (quiet.progress_interval, quiet.gallery, quiet.check_balance) == (None, False, False)  # as before
    with pytest.raises(ValueError, match="1 of 2 items are invalid") as info:
        CutoutBatchImageEditOperator(task_id="b", output_dir="/tmp/x/", prompt="blur", items=[
            {"key": "a", "image_urls": "https://x/a.png"}, {"key": "a", "image_urls": "https://x/b.png"}])
    assert "item 'a': the key is listed twice; keys must be unique" in str(info.value)


def test_chunk_items_and_file_stem():
    items = [{"key": str(i)} for i in range(10)]
    chunks = chunk_items(items, 4)
    assert [len(c) for c in chunks] == [4, 4, 2] and [i for c in chunks for i in c] == items
    with pytest.raises(exc.InvalidInputError, match=r"item .a. in chunk 1 and item 'A' in chunk 0"):
        chunk_items([{"key": "A"}, {"key": "b"}, {"key": "a"}], 2)  # one file on a case-insensitive store
    with pytest.raises(exc.InvalidInputError, match=r"item .b. in chunk 1 and item 'b' in chunk 0"):
        chunk_items([{"key": "b", "prompt": "grayscale"}, {"key": "c"}, {"key": "b", "prompt": "invert"}], 2)
    assert file_stem("red-sneaker_1.v2") == "red-sneaker_1.v2"  # a safe key is its own file name
    assert re.fullmatch(r"shoes_red_sneaker_1~[0-9a-f]{16}", file_stem("shoes/red sneaker #1"))
    keys = ["A/1", "A_1", "A 1", "a/1", ".A_1", "A_1.", "", "...", "item", "é", "e", "x" * 300, "x" * 301]
    stems = [file_stem(key) for key in keys]
    assert len(set(stems)) == len(keys) and all(0 < len(stem) <= 150 + 17 for stem in stems)


def test_check_balance_fails_before_any_edit(sandbox, airflow_db, tmp_path, capfd):
    from tests.dags.batch_dags import balance_checked

    sandbox.reset(balance=10)
    dr = balance_checked.test(run_conf={"n": 5, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("failed", 1)]
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 0 and [c["path"] for c in ledger["calls"]] == ["balance"]
    assert "planned cost is 20 credits but the account has 10" in "".join(capfd.readouterr())


def test_failures_within_max_failures_fraction_pass(sandbox, airflow_db, tmp_path):
    from tests.dags.batch_dags import tolerant

    sandbox.fault("failed_edit", count=2)
    dr = tolerant.test(run_conf={"n": 5, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("success", 1)]
    result = summary(dr)
    assert result["failed"] == 2 and result["edited"] == 3 and result["credits_spent"] == 12
    entries = manifest_entries(tmp_path).values()
    assert sorted(e["status"] for e in entries) == ["failed", "failed", "stored", "stored", "stored"]
    assert calls_and_charges(sandbox) == [(1, 0)] * 2 + [(1, 1)] * 3  # a failed edit is free and not resent
    again = summary(tolerant.test(run_conf={"n": 5, "out": str(tmp_path), "changed": "", "invalid": False}))
    assert again["edited"] == 2 and again["skipped"] == 3  # only the failed items are edited again
    assert calls_and_charges(sandbox) == [(1, 1)] * 3 + [(2, 1)] * 2  # each of the 5 paid once


def test_templated_values_wait_for_run_time():
    # Jinja inside items, or in the operator's defaults, is validated when rendered, not at parse time; the
    # same fields with a bad literal value are refused at parse time, naming the field
    templated = CutoutBatchImageEditOperator(task_id="b", output_dir="/tmp/x/", prompt="blur",
                                             items=[{"key": "a", "image_urls": "{{ var.value.cdn }}/a.png"}])
    assert templated.items == [{"key": "a", "image_urls": "{{ var.value.cdn }}/a.png"}]
    model = CutoutBatchImageEditOperator(task_id="c", output_dir="/tmp/x/", prompt="blur", model="{{ params.model }}",
                                         items=[{"key": "a", "image_urls": "https://x/a.png"}])
    assert model.model == "{{ params.model }}"
    with pytest.raises(exc.InvalidInputError, match="model='gpt-image-l' is not supported"):
        CutoutBatchImageEditOperator(task_id="d", output_dir="/tmp/x/", prompt="blur", model="gpt-image-l",
                                     items=[{"key": "a", "image_urls": "https://x/a.png"}])
    with pytest.raises(exc.InvalidInputError, match="image_urls"):
        CutoutBatchImageEditOperator(task_id="e", output_dir="/tmp/x/", prompt="blur",
                                     items=[{"key": "a", "image_urls": "ftp://x/a.png"}])


def test_an_item_held_by_a_live_run_is_waited_for_then_named_then_in_doubt(sandbox, airflow_db, tmp_path, capfd):
    import os
    import socket

    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.hooks.cutout import CutoutHook
    from airflow_provider_cutout.state.claims import Claims, Owner
    from tests.dags.batch_dags import impatient

    conf = {"n": 3, "out": str(tmp_path), "changed": "", "invalid": False}
    hook = CutoutHook()
    held = hook.validate("grayscale", [f"{sandbox.url}/samples/mug.png?w=40&h=30"], "gpt-image-1")
    held = hook.with_versions([held])[0]  # as the batch keys it
    other = Claims(ObjectStoragePath(f"{tmp_path}/"), Owner(token="other-run", dag_id="other_dag", run_id="r1",
                                                            task_id="t", host=socket.gethostname(), pid=os.getpid()))
    other.open()
    assert other.claim(held.fingerprint) is None  # item-0 is another live run's
    dr = impatient.test(run_conf=conf)
    assert states(dr)["batch"] == [("failed", 3)]  # each try waited 1 s for it, then failed (retryable)
    text = "".join(capfd.readouterr())
    assert "1 items are still held by other runs after claim_wait_timeout=1s" in text
    assert "item-0 (held by dag_id=other_dag run_id=r1 task_id=t" in text
    paid = sandbox.ledger()["by_fingerprint"]
    assert held.unversioned_fingerprint not in paid and len(paid) == 2 and {v["charges"] for v in paid.values()} == {1}

    other.close()  # the other run ends without a result for item-0: it is in doubt, and named
    dr = impatient.test(run_conf=conf)
    assert states(dr)["batch"] == [("failed", 1)]
    assert "1 item was or may have been charged without a stored result" in "".join(capfd.readouterr())
    assert read_manifest(tmp_path)["item-0"]["status"] == "in_doubt" and sandbox.ledger()["charges"] == 2


def test_consent_to_resend_after_a_read_timeout_releases_the_claim(sandbox, airflow_db, tmp_path, monkeypatch):
    """With the connection's retry_on_read_timeout, an edit whose answer never came is not in doubt: the
    user accepted paying twice, so its claim is released and the task's retry edits it again."""
    from tests.dags.batch_dags import batch

    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", sandbox.conn_json(
        read_timeout=0.3, retry_on_read_timeout=True, max_retries=0, backoff_base=0.01))
    sandbox.fault("slow", delay=1.0)
    dr = batch.test(run_conf={"n": 1, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("success", 2)]  # try 1 failed the item, try 2 edited it
    assert read_manifest(tmp_path)["item-0"]["status"] == "stored"
    time.sleep(1.0)  # the slow first edit completes on the server
    (paid,) = sandbox.ledger()["by_fingerprint"].values()
    assert paid["charges"] == 2  # the documented price of the consent


PHOTO, OTHER = "/samples/mug.png?w=52&h=40", "/samples/lamp.png?w=44&h=40"


def stored_files(folder):
    manifest = read_manifest(folder)
    assert all(e["status"] == "stored" for e in manifest.values()), manifest
    return {key: Path(e["stored_path"]).read_bytes() for key, e in manifest.items()}


def test_items_that_share_an_edit_pay_once_and_each_get_their_own_file(sandbox, airflow_db, tmp_path):
    # Variants with one photo and prompt: two in the first chunk, one more in the next.
    items = [{"key": "green-s", "image_urls": [PHOTO]}, {"key": "green-m", "image_urls": [PHOTO]},
             {"key": "green-l", "image_urls": [PHOTO]}, {"key": "blue", "image_urls": [OTHER]}]
    conf = {"out": str(tmp_path), "items": items, "size": 2}
    dr = catalog_chunks.test(run_conf=conf)
    assert states(dr)["batch"] == [("success", 1), ("success", 1)]
    ledger = sandbox.ledger()
    assert ledger["charges"] == 2 and sorted(v["charges"] for v in ledger["by_fingerprint"].values()) == [1, 1]
    files = stored_files(tmp_path)
    assert sorted(files) == ["blue", "green-l", "green-m", "green-s"]
    assert files["green-s"] == files["green-m"] == files["green-l"] != files["blue"]
    assert len({e["stored_path"] for e in read_manifest(tmp_path).values()}) == 4
    runs = xcoms(dr, "batch").values()
    assert sum(r["edited"] for r in runs) == 2 and sum(r["shared"] for r in runs) == 2
    assert sum(r["credits_spent"] for r in runs) == 8

    again = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["skipped"] for r in again) == 4 and sandbox.ledger()["charges"] == 2


def test_a_chunk_reads_only_its_items_from_an_indexed_log_and_still_pays_once_for_a_shared_photo(
        sandbox, airflow_db, tmp_path, monkeypatch):
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_cutout.state import manifest as manifest_module

    out = ObjectStoragePath(f"{tmp_path}/")
    others = manifest_module.Manifest(out, "earlier")  # the records of a large catalog edited before
    for i in range(1200):
        others.record({"fingerprint": f"fp-{i}", "key": f"other-{i}", "status": "stored", "credits": 4})
    others.close()
    items = [{"key": "green-s", "image_urls": [PHOTO]}, {"key": "blue", "image_urls": [OTHER]}]
    catalog_chunks.test(run_conf={"out": str(tmp_path), "items": items, "size": 1})
    assert charges_per_edit(sandbox) == [1, 1]
    manifest_module.Manifest(out, "compactor").compact()  # now in one indexed snapshot of 1,202 records
    (snapshot,) = (tmp_path / "_cutout" / "manifest").glob("*.jsonl")
    whole, ranged = [], []
    read_whole, read_ranges = manifest_module.Manifest._read_whole, manifest_module.read_ranges

    def counted_whole(self, name, **how):
        whole.append(name)
        return read_whole(self, name, **how)

    def counted_ranges(path, ranges):
        ranged.extend(end - start for start, end in ranges)
        return read_ranges(path, ranges)

    monkeypatch.setattr(manifest_module.Manifest, "_read_whole", counted_whole)
    monkeypatch.setattr(manifest_module, "read_ranges", counted_ranges)
    # blue unchanged; green-m a new key with green-s's photo and prompt (in another chunk's records)
    items = [{"key": "blue", "image_urls": [OTHER]}, {"key": "green-m", "image_urls": [PHOTO]}]
    dr = catalog_chunks.test(run_conf={"out": str(tmp_path), "items": items, "size": 1})
    runs = [run for _, run in sorted(xcoms(dr, "batch").items())]
    assert [(r["skipped"], r["shared"], r["credits_spent"]) for r in runs] == [(1, 0, 0), (0, 1, 0)]
    assert charges_per_edit(sandbox) == [1, 1]  # green-m stored from green-s's edit, not paid again
    assert (tmp_path / "green-m.png").read_bytes() == (tmp_path / "green-s.png").read_bytes()
    assert snapshot.name not in whole and 0 < sum(ranged) < snapshot.stat().st_size / 20  # their lines only
    assert [Path(r["gallery"]).name for r in runs] == ["cutout-gallery-0.html", "cutout-gallery-1.html"]
    page = (tmp_path / "cutout-gallery-1.html").read_text()
    assert "green-m" in page and "blue" not in page and "other-1" not in page  # the chunk's own items


def test_keys_that_read_alike_as_file_names_never_share_a_file(sandbox, airflow_db, tmp_path):
    items = [{"key": "A/1", "image_urls": [PHOTO]}, {"key": "A_1", "image_urls": [OTHER]}]
    dr = catalog_chunks.test(run_conf={"out": str(tmp_path), "items": items, "size": 1})  # one chunk each
    assert states(dr)["batch"] == [("success", 1), ("success", 1)]
    files = stored_files(tmp_path)
    assert sorted(files) == ["A/1", "A_1"] and files["A/1"] != files["A_1"]
    assert read_manifest(tmp_path)["A_1"]["stored_path"].endswith("/A_1.png")
    assert charges_per_edit(sandbox) == [1, 1]


def test_keys_that_differ_only_in_case_are_refused_before_anything_is_paid(sandbox, airflow_db, tmp_path, capfd):
    """Money case 12: SKU-1 and sku-1 would be one file on a case-insensitive store (macOS, SMB, casefolded
    ext4), one item showing the other's result while the run says success; refused, naming both, nothing sent."""
    items = [{"key": "SKU-1", "image_urls": [PHOTO]}, {"key": "sku-1", "image_urls": [OTHER]}]
    dr = catalog_chunks.test(run_conf={"out": str(tmp_path), "items": items, "size": 10})
    assert states(dr)["batch"] == [("failed", 1)] and sandbox.ledger()["calls"] == []
    assert "item 'sku-1': its file name 'sku-1' differs only in case from that of item 'SKU-1'" in "".join(
        capfd.readouterr())


def test_a_deleted_result_is_restored_and_never_counted_done_without_its_file(sandbox, airflow_db, tmp_path,
                                                                             capfd):
    conf = {"n": 6, "out": str(tmp_path), "changed": "", "invalid": False}
    assert summary(batch.test(run_conf=conf))["edited"] == 6
    gone = [Path(read_manifest(tmp_path)[key]["stored_path"]) for key in ("item-1", "item-4")]
    for path in gone:
        path.unlink()  # a lifecycle rule, or a reviewer who wants a new result
    capfd.readouterr()
    free = summary(batch.test(run_conf=conf))  # the result URLs still answer: fetched again, free
    assert (free["restored"], free["skipped"], free["credits_spent"]) == (2, 4, 0)
    assert all(path.exists() for path in gone) and sandbox.ledger()["charges"] == 6
    said = "".join(capfd.readouterr())
    assert re.search(r"Cutout batch: restored 2 items \(their results fetched again, free\): item-[14], item-[14]",
                     said) and "Cutout batch: edited again" not in said

    for path in gone:
        path.unlink()
    time.sleep(1.2)
    sandbox.server.state.config.result_ttl = 1.0  # and now the old result URLs have expired too
    paid = batch.test(run_conf=conf)
    assert states(paid)["batch"] == [("success", 1)]
    again = summary(paid)
    assert (again["edited_again"], again["restored"], again["skipped"], again["in_doubt"], again["credits_spent"]) == (
        2, 0, 4, 0, 8)  # paid again: counted as such, not as restored
    assert again["planned_credits"] == 8  # planned and budgeted before anything was sent
    assert all(path.exists() for path in gone)
    assert {e["status"] for e in read_manifest(tmp_path).values()} == {"stored"}
    charges = sorted(v["charges"] for v in sandbox.ledger()["by_fingerprint"].values())
    assert charges == [1, 1, 1, 1, 2, 2]  # only the two lost results were paid again, once each
    said = "".join(capfd.readouterr())  # paid again: said so, not "restored"
    assert re.search(r"Cutout batch: edited again 2 items \(stored file and result URL lost: paid again\): "
                     r"item-[14], item-[14]", said)
    assert "Cutout batch: restored" not in said
    assert summary(batch.test(run_conf=conf))["skipped"] == 6 and sandbox.ledger()["charges"] == 8


def test_a_transient_error_on_a_live_result_url_never_makes_a_restore_pay(sandbox, airflow_db, tmp_path, capfd):
    """Money case 5: a deleted result's URL answers one 500 (a CDN's bad second) while it is restored. Only a
    definite "gone" (403, 404, 410) lets a restore pay: the try fails with the paid result kept, and Airflow's
    retry fetches it, free (before, any error counted as expired: paid again)."""
    conf = {"n": 2, "out": str(tmp_path), "changed": "", "invalid": False}
    assert summary(batch.test(run_conf=conf))["edited"] == 2
    lost = Path(read_manifest(tmp_path)["item-1"]["stored_path"])
    lost.unlink()
    sandbox.fault("http_error", status=500, path="results")
    run = batch.test(run_conf=conf)
    assert calls_and_charges(sandbox) == [(1, 1), (1, 1)]  # nothing paid again
    assert states(run)["batch"] == [("success", 2)]  # the first try failed the item, the retry fetched it
    assert "item-1: ResultDownloadError: result URL" in "".join(capfd.readouterr())
    assert summary(run)["recovered"] == 1 and lost.exists()


def charged_fingerprints_all_recorded(sandbox, folder) -> None:
    """Every edit the sandbox charged is in the manifest with its result (stored, or paid and to fetch)."""
    from tests.test_catalog_runs import sent_fingerprint

    paid = {fp for fp, v in sandbox.ledger()["by_fingerprint"].items() if v["charges"]}
    recorded = {sent_fingerprint(e) for e in manifest_entries(folder).values() if e["status"] in ("stored", "edited")}
    assert paid <= recorded, f"charged without a record: {paid - recorded}"


def test_execution_timeout_stops_spending(sandbox, airflow_db, tmp_path):
    from tests.dags.batch_dags import timed

    sandbox.server.state.config.latency = 1.0  # 48 edits of 1 s at concurrency 4: 12 s, timeout after 4 s
    conf = {"n": 48, "out": str(tmp_path), "changed": "", "invalid": False}
    assert states(timed.test(run_conf=conf))["batch"] == [("failed", 1)]
    sent = sandbox.ledger()["edit_calls"]
    assert 4 <= sent <= 4 * 4 + 4  # at most 4 a second for 4 s, and those in flight: never the whole queue
    charged_fingerprints_all_recorded(sandbox, tmp_path)
    sandbox.server.state.config.latency = 0.0
    hand_over(tmp_path)
    rest = summary(slow.test(run_conf=conf))  # the re-run pays for the rest only
    assert rest["edited"] == 48 - sent and rest["skipped"] == sent and rest["in_doubt"] == 0
    ledger = sandbox.ledger()
    assert ledger["charges"] == 48 and {v["charges"] for v in ledger["by_fingerprint"].values()} == {1}


@pytest.mark.e2e  # a process of its own, signalled
def test_sigterm_stops_spending(sandbox, airflow_db, tmp_path):
    from tests.run_dag import finish, spawn

    sandbox.server.state.config.latency = 1.0
    conf = {"n": 48, "out": str(tmp_path), "changed": "", "invalid": False}
    proc = spawn("tests.dags.batch_dags:stoppable", conf)
    deadline = time.monotonic() + 120
    while sandbox.ledger()["edit_calls"] < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    at_stop = sandbox.ledger()["edit_calls"]
    proc.send_signal(signal.SIGTERM)  # what Airflow sends a task it stops: on_kill
    run = finish(proc)
    assert run["state"] == "failed" and "told to stop" in run["output"]
    sent_after = sandbox.ledger()["edit_calls"] - at_stop
    assert sent_after <= 4, f"{sent_after} edits ended after SIGTERM: only the 4 in flight may"
    charged_fingerprints_all_recorded(sandbox, tmp_path)
    assert set(charges_per_edit(sandbox)) == {1}


def test_a_stop_during_a_retry_after_wait_sends_nothing_afterwards(sandbox, airflow_db, tmp_path, capfd):
    """Money case 7: a 429 asks for 6 s, execution_timeout stops the task after 4: the waiting thread wakes at
    the stop and sends nothing (before, it slept on and its POST was charged 2 s after the task stopped)."""
    from tests.dags.batch_dags import timed

    sandbox.fault("rate_limit", retry_after=6)
    assert states(timed.test(run_conf={"n": 1, "out": str(tmp_path), "changed": "", "invalid": False}))["batch"] == [
        ("failed", 1)]
    time.sleep(7)  # past the 6 s the 429 asked for (it came before the run ended)
    assert calls_and_charges(sandbox) == [(1, 0)]  # the 429 only: nothing sent after the stop
    assert "told to stop" in "".join(capfd.readouterr())
    hand_over(tmp_path)
    assert summary(batch.test(run_conf={"n": 1, "out": str(tmp_path), "changed": "", "invalid": False}))[
        "edited"] == 1  # the item was released: the next run edits it, once
    assert calls_and_charges(sandbox) == [(2, 1)]


def test_a_shared_result_is_never_copied_from_a_file_that_holds_another_edit_now(sandbox, airflow_db, tmp_path):
    def run(*items):
        return catalog_chunks.test(run_conf={"out": str(tmp_path), "items": list(items), "size": 10})

    run({"key": "blue", "image_urls": [PHOTO]}, {"key": "red", "image_urls": [PHOTO]})  # one edit, two files
    run({"key": "red", "image_urls": [PHOTO], "prompt": "invert"})  # red's file now holds another edit
    run({"key": "green", "image_urls": [PHOTO]})  # the first edit again: copied, but never from red's file
    files = {key: Path(e["stored_path"]).read_bytes() for key, e in read_manifest(tmp_path).items()}
    assert files["green"] == files["blue"] != files["red"]
    assert charges_per_edit(sandbox) == [1, 1]  # green paid nothing


@pytest.mark.e2e  # a process of its own, killed
def test_a_restore_killed_after_its_send_leaves_the_item_in_doubt(sandbox, airflow_db, tmp_path):
    from tests.run_dag import spawn

    conf = {"n": 4, "out": str(tmp_path), "changed": "", "invalid": False}
    assert summary(batch.test(run_conf=conf))["edited"] == 4
    lost = Path(read_manifest(tmp_path)["item-2"]["stored_path"])
    lost.unlink()
    time.sleep(1.2)
    sandbox.server.state.config.result_ttl = 1.0  # its result URL has expired too: the restore must pay
    sandbox.server.state.config.latency = 2.0
    sandbox.server.state.config.charge_hung_up = True
    proc = spawn("tests.dags.batch_dags:batch", conf)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and read_manifest(tmp_path)["item-2"]["status"] != "in_doubt":
        time.sleep(0.05)  # the restore records that it is sending before it sends
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)  # the API finishes the edit and charges it
    assert sandbox.ledger()["charges"] == 5
    sandbox.server.state.config.latency = 0.0
    again = batch.test(run_conf=conf)
    assert states(again)["batch"] == [("failed", 1)] and sandbox.ledger()["charges"] == 5  # in doubt: not resent
    assert charges_per_edit(sandbox) == [1, 1, 1, 2]  # the lost result's edit: once delivered, once restoring
    assert read_manifest(tmp_path)["item-2"]["status"] == "in_doubt"


def test_a_missing_connection_names_its_id_type_and_environment_form(sandbox, airflow_db, tmp_path, capfd):
    from tests.dags.batch_dags import unconnected

    dr = unconnected.test(run_conf={"n": 2, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("failed", 1)] and sandbox.ledger()["calls"] == []  # no retry: nothing to fix
    text = "".join(capfd.readouterr())
    assert "MissingConnectionError: the connection 'cutout_prod' is not defined" in text
    assert "AIRFLOW_CONN_CUTOUT_PROD='{\"conn_type\": \"cutout\"" in text


def test_a_wrong_model_for_10000_items_is_said_once():
    items = [{"key": f"sku-{i}", "image_urls": [f"https://cdn.example.com/{i}.jpg"]} for i in range(10_000)]
    with pytest.raises(ValueError) as raised:
        CutoutBatchImageEditOperator(task_id="b", items=items, output_dir="/tmp/x/", prompt="blur", model="gpt-9")
    text = str(raised.value)
    assert text.count("model='gpt-9' is not supported") == 1 and len(text.splitlines()) == 2
    assert "10,000 of 10,000 items are invalid" in text
    assert "10,000 items (item 'sku-0', item 'sku-1', item 'sku-2', item 'sku-3', item 'sku-4', ... and 9995 more)" \
        in text


def test_an_all_skipped_run_logs_no_nan_and_names_what_it_did(sandbox, airflow_db, tmp_path, capfd):
    conf = {"n": 3, "out": str(tmp_path), "changed": "", "invalid": False}
    batch.test(run_conf=conf)
    first = "".join(capfd.readouterr())
    assert "Cutout batch: edited 3 items: item-" in first and "Cutout batch: review gallery: " in first
    assert summary(batch.test(run_conf=conf))["skipped"] == 3 and charges_per_edit(sandbox) == [1, 1, 1]
    again = "".join(capfd.readouterr())
    progress = [line for line in again.splitlines() if "Cutout batch progress" in line]
    assert progress and all("nan" not in line for line in progress) and "ETA -" in progress[-1]


def test_a_batch_of_one_failed_item_says_1_item_not_1_items(sandbox, airflow_db, tmp_path, capfd):
    sandbox.fault("failed_edit", count=3)  # every try of the one item fails (free)
    dr = batch.test(run_conf={"n": 1, "out": str(tmp_path), "changed": "", "invalid": False})
    assert states(dr)["batch"] == [("failed", 3)] and sandbox.ledger()["charges"] == 0
    text = "".join(capfd.readouterr())
    assert "Cutout batch plan: 1 item, 0 already stored (skipped)" in text
    assert "1 item failed, more than max_failures=0 allows (0)" in text
    assert "Cutout batch: failed 1 item: item-0" in text
    wrong = re.search(r"(?<![\w.,])1 (items|keys|edits)\b", text)  # (not a rate: "207.1 items/s")
    assert wrong is None, text[max(wrong.start() - 200, 0) : wrong.end() + 80]


class _Log:
    """A task logger that keeps its lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message, *args):
        self.lines.append(message % args)

    warning = error = info


def test_every_count_of_one_in_the_batch_messages_is_singular():
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowException

    from airflow_provider_cutout.api.governor import Governor
    from airflow_provider_cutout.catalog.checks import Checks
    from airflow_provider_cutout.catalog.plan import Defaults, check_items
    from airflow_provider_cutout.catalog.planning import Plan
    from airflow_provider_cutout.catalog.progress import Progress
    from airflow_provider_cutout.catalog.report import Reporter

    (item,), _ = check_items([{"key": "a", "image_urls": ["https://cdn.example.com/a.jpg"]}],
                             Defaults(prompt="grayscale"), base_url="https://www.cutout.pro")
    plan = Plan(skipped=(), to_refetch=(), to_restore=((item, {"key": "a"}),), to_edit=(), followers={},
                in_doubt=(), rejected=(), to_attempt=1, listed=None)
    config = SimpleNamespace(max_failures=0, failure_limit=lambda attempted: 0, max_credits=1, check_balance=False)

    def reporter(**counts):
        progress = Progress(total=1)
        for name, value in counts.items():
            setattr(progress, name, value)
        governor = Governor(threading.Event())
        return Reporter(config, progress, None, "/out", log, chunk=None, keys=set(), governor=governor), progress

    log = _Log()
    reporter()[0].plan(plan, 1)
    assert log.lines[0].startswith("Cutout batch plan: 1 item, 0 already stored")
    assert log.lines[1].startswith("Cutout batch: 1 stored result is missing from /out/")

    failed, _ = reporter(failed=1)
    with pytest.raises(AirflowException, match=r"^1 item failed, more than max_failures=0"):
        failed._fail_if_incomplete({"not_attempted": 0}, 1)
    killed, progress = reporter()
    progress.killed.set()
    with pytest.raises(AirflowException, match="; 1 item was not attempted"):
        killed._fail_if_incomplete({"not_attempted": 1}, 1)
    stopped, progress = reporter()
    progress.stop_error = exc.AuthenticationError("the key was refused")
    with pytest.raises(Exception, match="the batch stopped at once: 1 item was not attempted"):
        stopped._fail_if_incomplete({"not_attempted": 1}, 1)
    doubtful, progress = reporter(doubtful=["a"])
    with pytest.raises(Exception, match="1 item was or may have been charged") as raised:
        doubtful._fail_if_incomplete({"not_attempted": 0}, 1)
    assert "It is not sent again automatically" in str(raised.value) and "list of its key, to edit it again" in str(
        raised.value)

    with pytest.raises(exc.InvalidInputError, match="for 1 edit, over max_credits=1"):
        Checks(config, None, None, Progress(total=1), log).budget(plan)
    with pytest.raises(exc.InvalidInputError, match=r"^1 key would write one file from two chunks"):
        chunk_items([{"key": "a"}, {"key": "b"}, {"key": "a"}], 2)


def test_a_corrected_prompt_is_announced_only_by_the_run_that_edits_with_it(sandbox, airflow_db, tmp_path, capfd):
    """The log line naming the items a reviewer's corrected prompt applies to is said by the run that edits
    them with it, not again by every later run that skips them (their corrected edit is stored)."""
    from tests.test_decisions import ITEMS, decide

    conf = {"out": str(tmp_path), "items": ITEMS, "size": 4}
    catalog_chunks.test(run_conf=conf)
    decide(tmp_path, "a", "rejected", note="the mug lost its handle", prompt="invert")
    capfd.readouterr()
    again = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["edited"] for r in again) == 1 and sandbox.ledger()["charges"] == 5
    assert "Cutout batch: 1 item uses a reviewer's corrected prompt: a" in "".join(capfd.readouterr())

    third = xcoms(catalog_chunks.test(run_conf=conf), "batch").values()
    assert sum(r["skipped"] for r in third) == 4 and sandbox.ledger()["charges"] == 5
    assert "corrected prompt" not in "".join(capfd.readouterr())  # stored under it already: nothing to say
