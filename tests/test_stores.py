"""The object stores a deployment keeps its files in, on emulators on loopback (tests/stores.py): S3 (moto) and
Azure Blob Storage (Azurite), the same tests on each: sources on the store signed, read and re-checked, the single
edit storing there, a run killed with edits in flight, and the store's listing cache, races on deletes and ETags.
(A batch, its re-run and two overlapping runs on each store: tests/test_catalog_runs.py's ``output`` fixture.)
Every charge is counted at the sandbox's ledger, per request fingerprint."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from airflow_provider_cutout.manifest import read_manifest
from tests.conftest import charges_per_edit
from tests.run_dag import finish, spawn

pytestmark = pytest.mark.e2e  # newest Airflow only (make test installs the stores' providers there)

#: What a signed URL carries that must appear nowhere else, per store.
SIGNATURE_MARKS = {"s3": ("Signature=", "X-Amz-Credential", "AWSAccessKeyId"), "abfs": ("sig=", "AccountKey"),
                   "gs": ("X-Goog-Signature", "X-Goog-Credential", "PRIVATE KEY")}


@pytest.fixture(params=["s3", "gs", "abfs"])
def store(request):
    return request.getfixturevalue(request.param)


def path_of(store: Any, key: str) -> Any:
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(store.uri(key))


def test_sources_on_the_store_reach_the_api_signed_and_are_rechecked_for_free(sandbox, airflow_db, tmp_path, store):
    """Catalog photos in the store: the batch checks them and sends signed URLs, which the sandbox fetches; the
    signature shows up in no log line, XCom value, manifest file or metadata DB row; a re-run asks the store
    whether they changed and pays nothing."""
    from airflow_provider_cutout.sandbox import edits

    sources = []
    for name in ("mug", "lamp", "watch"):
        key = f"src/{tmp_path.name}/{name}.jpg"
        store.put(key, edits.sample_image(name, 1280, 720, "jpg"))
        sources.append(store.uri(key))
    proc = spawn("tests.dags.batch_dags:s3_sources", {"out": str(tmp_path / "out"), "sources": sources})
    run = finish(proc)
    assert run["state"] == "success", run.get("log")
    assert run["summaries"][0]["edited"] == 3 and sandbox.ledger()["charges"] == 3  # the sandbox fetched them
    entries = read_manifest(tmp_path / "out")
    assert sorted(e["image_urls"][0] for e in entries.values()) == sorted(sources)
    places = {"logs": run["output"], "xcom": json.dumps(run["summaries"])}
    places |= {str(p): p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file()
               and p.suffix != ".png"}
    places["metadata DB"] = (proc.home / "airflow.db").read_bytes().decode("latin-1")
    for place, text in places.items():
        assert not any(mark in text for mark in SIGNATURE_MARKS[store.scheme]), f"a signed URL leaked into {place}"
    again = finish(spawn("tests.dags.batch_dags:s3_sources", {"out": str(tmp_path / "out"), "sources": sources}))
    assert again["state"] == "success", again.get("log")
    assert again["summaries"][0]["skipped"] == 3 and sandbox.ledger()["charges"] == 3  # same objects: free
    assert charges_per_edit(sandbox) == [1, 1, 1]


def test_the_single_edit_stores_its_result_on_the_store_and_a_rerun_pays_nothing(sandbox, airflow_db, tmp_path,
                                                                                  store):
    prefix = f"single/{tmp_path.name}"
    first = finish(spawn("tests.dags.operator_dags:stored_edit", {"out": store.uri(prefix), "file": ""}))
    assert first["state"] == "success", first.get("log")
    assert "Request URL" not in first["output"]  # the Azure SDK's request log (headers too) is kept out of it
    files = [k for k in store.keys(prefix + "/") if k.endswith(".png")]
    assert len(files) == 1 and store.get(files[0])[:8] == b"\x89PNG\r\n\x1a\n"
    again = finish(spawn("tests.dags.operator_dags:stored_edit", {"out": store.uri(prefix), "file": ""}))
    assert again["state"] == "success", again.get("log")
    assert sandbox.ledger()["charges"] == 1 and charges_per_edit(sandbox) == [1]


def test_a_run_killed_with_edits_in_flight_on_the_store_pays_each_edit_once(sandbox, airflow_db, tmp_path, store):
    """SIGKILL once claims are on the store and edits in flight (the sandbox charges the edits whose client hung
    up, as a service that finishes the work would); the next run pays nothing twice and holds back what is in
    doubt; a run with resend_in_doubt=True (another DAG, the folder handed over) stores every item."""
    n, prefix = 24, f"killed/{tmp_path.name}"
    sandbox.reset(balance=10_000)
    sandbox.server.state.config.latency = 0.2
    sandbox.server.state.config.charge_hung_up = True
    conf = {"n": n, "out": store.uri(prefix), "changed": "", "invalid": False}
    proc = spawn("tests.dags.batch_dags:killed", conf)
    deadline = time.monotonic() + 120
    while sum(c["path"] == "edit" for c in sandbox.ledger()["calls"]) < 3:  # claimed on the store, then sent
        assert proc.poll() is None and time.monotonic() < deadline, "the run sent no edit"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [k for k in store.keys(f"{prefix}/_cutout/claims/") if k.endswith(".json")]
    assert any(c.get("hung_up") for c in sandbox.settled_ledger()["calls"]), "no edit was in flight"
    assert max(charges_per_edit(sandbox), default=0) <= 1

    cautious = finish(spawn("tests.dags.batch_dags:killed", conf))
    doubtful = [e for e in read_manifest(store.uri(prefix)).values() if e["status"] == "in_doubt"]
    assert cautious["state"] == ("failed" if doubtful else "success"), cautious.get("log")
    assert max(charges_per_edit(sandbox)) == 1

    path_of(store, f"{prefix}/_cutout/owner.json").unlink()  # handed over to the DAG that may resend
    final = finish(spawn("tests.dags.batch_dags:killed_resend", conf))
    assert final["state"] == "success", final.get("log")
    entries = read_manifest(store.uri(prefix))
    assert len(entries) == n and {e["status"] for e in entries.values()} == {"stored"}
    assert max(charges_per_edit(sandbox)) <= 2 and sum(c > 1 for c in charges_per_edit(sandbox)) <= len(doubtful)


def test_a_heartbeat_written_after_a_listing_is_read_from_the_store_not_the_listing(store, tmp_path):
    """A run lists ``_cutout/owners/`` when it starts; another run's heartbeat written after that listing (by
    another process: here the store's own client) must still be found (s3fs, gcsfs and adlfs answer "no such
    file" from the listing they cached): else a live run is taken for dead and its items for in doubt. The same
    for a claim written after a listing of the claims."""
    from airflow_provider_cutout.state.claims import Claims, Owner
    from airflow_provider_cutout.state.io import list_files

    prefix = f"beats/{tmp_path.name}"
    first = Claims(path_of(store, prefix + "/"), Owner(token="first", host="elsewhere"), heartbeat_timeout=60)
    first.open()
    try:
        list_files(first._owners)  # the listings this process caches
        list_files(first.dir)
        other = Claims(path_of(store, prefix + "/"), Owner(token="second", host="elsewhere"), heartbeat_timeout=60)
        store.put(f"{prefix}/_cutout/owners/second.json", other._beat_body())  # another run, started since
        store.put(f"{prefix}/_cutout/claims/fp-1.json", other._claim_body())
        assert first.is_alive(Owner(token="second", host="elsewhere"))
        assert first.holder("fp-1").token == "second"
        assert first.claim("fp-1").token == "second"
    finally:
        first.close()


def test_a_log_file_another_run_deleted_first_is_no_failure(store, tmp_path):
    """Two runs tidying the manifest at once: one deletes a folded log file that the other (this process, which
    still lists it in its cache) deletes too: ``unlink(missing_ok=True)`` looks, then deletes, and gcsfs raises
    when the object went in between (S3 and Azure delete quietly)."""
    from airflow_provider_cutout.state.io import list_files
    from airflow_provider_cutout.state.manifest import Manifest

    prefix = f"tidy/{tmp_path.name}"
    folder = path_of(store, prefix + "/")
    manifest = Manifest(folder, "w")
    manifest.record({"fingerprint": "fp", "key": "k", "status": "stored", "stored_path": str(folder / "k.png")})
    manifest.close(compact=False)
    (name,) = [n for n in list_files(manifest.path) if n.endswith(".jsonl")]
    store.delete(f"{prefix}/_cutout/manifest/{name}")  # the other run deleted it
    manifest._delete(name)  # no error: it is gone, as wanted


def test_a_rerun_learns_unchanged_sources_from_one_listing_of_their_folder(sandbox, store, tmp_path):
    """A re-run learns an unchanged source's version from one listing of its folder (100 sources or more), by
    the ETag a read of the source recorded: a listing gives it in the store's own form (Azure's ``0x8D...`` and
    GCS's are bare, the ``ETag`` header is quoted), so it is compared in the header's: no source is read."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow_provider_cutout.api.sources import Recorded
    from airflow_provider_cutout.hooks.cutout import CutoutHook
    from airflow_provider_cutout.sandbox import edits

    folder, photo = f"etags/{tmp_path.name}", edits.sample_image("mug", 40, 30, "png")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(f"{folder}/p{i:03d}.png", photo), range(100)))
    uris = [store.uri(f"{folder}/p{i:03d}.png") for i in range(100)]
    first = CutoutHook().inspect_sources(uris)
    assert all(info.validator for info in first.values())
    hook, read = CutoutHook(), []
    inspect = hook._inspect
    hook._inspect = lambda url, known: read.append(url) or inspect(url, known)  # a spy: the read still happens
    again = hook.inspect_sources(uris, known={u: Recorded(i.version, i.validator) for u, i in first.items()})
    assert read == [] and all(info.unchanged for info in again.values())


def test_gcs_sources_without_a_key_or_a_service_account_fail_naming_the_fix(sandbox, gs):
    """Credentials with no private key sign through IAM as their service account (Cloud Composer's); credentials
    with neither (here anonymous) fail before anything is sent, naming both ways to sign."""
    from airflow_provider_cutout import exceptions as exc
    from airflow_provider_cutout.hooks.cutout import CutoutHook

    gs.put("nokey/mug.jpg", b"photo")
    with pytest.raises(exc.InvalidInputError) as err:
        CutoutHook()._sign("gs://google_cloud_anonymous@catalog/nokey/mug.jpg")
    assert "Keyfile JSON" in str(err.value) and "roles/iam.serviceAccountTokenCreator" in str(err.value)
    assert sandbox.ledger()["calls"] == []

