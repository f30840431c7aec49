"""An upgrade pays for nothing: catalogs and single edits that the release before sources were hashed whole
(7e7fea0's package, run in a process of its own) stored, or left in doubt, re-run with this one. That release
keyed a source by its ETag, else Last-Modified and size, else a hash of its first 128 KiB; this one by the
digest of its bytes, and finds what the older one recorded by those legacy versions."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from tests.conftest import REPO, calls_and_charges, states, xcoms
from tests.run_dag import finish, spawn

pytestmark = pytest.mark.e2e  # newest Airflow only: the catalog's logic is the same on both
OLD = "7e7fea0"  # the release before sources were hashed whole


@pytest.fixture(scope="module")
def old_release(tmp_path_factory) -> str:
    """That release's package, from this repository's history."""
    if subprocess.run(["git", "cat-file", "-e", f"{OLD}^{{commit}}"], cwd=REPO, capture_output=True).returncode:
        pytest.skip(f"commit {OLD} is not in this clone (a shallow clone): the upgrade cannot be replayed")
    root = tmp_path_factory.mktemp("old-release")
    archive = subprocess.run(["git", "archive", OLD, "airflow_provider_cutout"], cwd=REPO, capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return str(root)


def run_old(old_release: str, dag: str, conf: dict) -> dict:
    run = finish(spawn(dag, conf, cwd=old_release, PYTHONPATH=f"{old_release}:{REPO}"))
    assert run["package"].startswith(old_release), f"the old release's package was not the one run: {run['package']}"
    return run


@pytest.mark.parametrize("validators", ["", "none"])  # an ETag; none at all, photos of more than 128 KiB
def test_a_catalog_the_old_release_stored_or_left_in_doubt_is_not_paid_again(sandbox, airflow_db, tmp_path,
                                                                              old_release, validators):
    from tests.dags.batch_dags import conditional

    conf = {"n": 3, "out": str(tmp_path), "changed": "", "invalid": False, "validators": validators, "big": True}
    sandbox.fault("http_error", status=504, after_edit=True)  # one item charged, its answer lost: in doubt
    old = run_old(old_release, "tests.dags.batch_dags:conditional", conf)
    assert old["state"] == "failed" and calls_and_charges(sandbox) == [(1, 1)] * 3
    new = conditional.test(run_conf=conf)
    assert states(new)["batch"][-1][0] == "failed"  # the item in doubt stays in doubt
    assert calls_and_charges(sandbox) == [(1, 1)] * 3  # before the fix (no validators): paid again
    again = conditional.test(run_conf=conf)
    assert states(again)["batch"][-1][0] == "failed" and calls_and_charges(sandbox) == [(1, 1)] * 3


@pytest.mark.parametrize("validators", ["etag,modified", "none"])
def test_a_single_edit_the_old_release_stored_is_not_paid_again(sandbox, airflow_db, tmp_path, old_release,
                                                                validators):
    from tests.dags.operator_dags import url_stored

    conf = {"url": f"{sandbox.url}/samples/lamp.png?w=1280&h=960&grain=1&validators={validators}",
            "out": str(tmp_path)}
    assert run_old(old_release, "tests.dags.operator_dags:url_stored", conf)["state"] == "success"
    new = url_stored.test(run_conf=conf)
    assert states(new)["edit"] == [("success", 1)] and calls_and_charges(sandbox) == [(1, 1)]
    assert xcoms(new, "edit")[-1]  # the stored result, returned


def test_a_single_edit_the_old_release_left_in_doubt_is_not_paid_again(sandbox, airflow_db, tmp_path, old_release):
    from tests.dags.operator_dags import url_stored

    conf = {"url": f"{sandbox.url}/samples/lamp.png?w=1280&h=960&grain=1&validators=none", "out": str(tmp_path)}
    sandbox.fault("http_error", status=504, after_edit=True)
    assert run_old(old_release, "tests.dags.operator_dags:url_stored", conf)["state"] == "failed"
    assert calls_and_charges(sandbox) == [(1, 1)]
    new = url_stored.test(run_conf=conf)
    assert states(new)["edit"] == [("failed", 1)] and calls_and_charges(sandbox) == [(1, 1)]


def test_a_live_run_of_the_old_release_is_waited_for_not_paid_again(sandbox, airflow_db, tmp_path, old_release):
    """A rolling upgrade: a run of the old release is sending an item (its claim under the legacy version) when a
    run of this one starts. This one waits for that claim instead of paying under the new version."""
    import time

    from tests.dags.batch_dags import conditional
    from tests.run_dag import spawn

    conf = {"n": 1, "out": str(tmp_path), "changed": "", "invalid": False, "validators": "none", "big": True}
    sandbox.fault("slow", delay=15)  # charged, answered 15 s later: the old run holds its claim meanwhile
    old = spawn("tests.dags.batch_dags:conditional", conf, cwd=old_release, PYTHONPATH=f"{old_release}:{REPO}")
    deadline = time.monotonic() + 120
    while not any(c.get("outcome") == "charged" for c in sandbox.ledger()["calls"]):
        assert time.monotonic() < deadline and old.poll() is None, "the old release's run never sent its edit"
        time.sleep(0.1)
    new = conditional.test(run_conf=conf)
    assert finish(old)["state"] == "success"
    assert calls_and_charges(sandbox) == [(1, 1)]  # before the fix: paid again under the new version
    assert states(new)["batch"][-1][0] == "success"
