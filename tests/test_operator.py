"""CutoutImageEditOperator in real DAG runs (dag.test() on sqlite) against the sandbox."""

from __future__ import annotations

import re
import signal
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from airflow_provider_cutout.exceptions import InvalidInputError
from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator
from tests.conftest import calls_and_charges, charges_per_edit, states, xcoms
from tests.dags.operator_dags import chain, expand_kwargs, single


def test_chain_plain_mapped_templated_and_stored(sandbox, airflow_db, tmp_path):
    dr = chain.test(run_conf={"out": str(tmp_path), "ratio": "16:9"})
    assert {task: [s for s, _ in v] for task, v in states(dr).items()} == {
        "downstream": ["success"], "mapped": ["success", "success"], "pick_prompt": ["success"],
        "plain": ["success"], "sample_urls": ["success"],
    }
    url = xcoms(dr, "plain")[-1]
    result = xcoms(dr, "plain", "cutout_result")[-1]
    assert url == result["image_url"] and url.startswith(sandbox.url + "/results/")
    assert result["model"] == "qwen-image-edit-plus" and result["aspect_ratio"] == "16:9"
    assert result["credits"] == 4 and len(result["reference_image_urls"]) == 2 and result["request_id"]
    stored = Image.open(result["stored_path"])
    assert result["stored_path"] == str(tmp_path / "plain" / f"{result['id']}.png")
    assert abs(stored.width / stored.height - 16 / 9) < 0.02
    (call,) = [c for c in sandbox.ledger()["calls"] if c.get("id") == result["id"]]
    assert call["operations"] == ["mirror", "grayscale"]  # the prompt came from an upstream XCom

    mapped = xcoms(dr, "mapped", "cutout_result")
    assert sorted(mapped) == [0, 1]
    for item in mapped.values():
        img = Image.open(item["stored_path"])
        assert img.width == img.height and item["aspect_ratio"] == "1:1"
    down = xcoms(dr, "downstream")[-1]
    assert down["url"] == url and down["head"] == "89504e470d0a1a0a" and down["size"] > 0
    assert sorted(down["mapped"]) == sorted(xcoms(dr, "mapped").values())
    assert not list(tmp_path.rglob("*.part"))
    ledger = sandbox.ledger()
    assert ledger["charges"] == 3 and ledger["credits_charged"] == 12

    link = xcoms(dr, "plain", "_link_CutoutResultLink")[-1]
    assert link == url
    assert CutoutImageEditOperator.operator_extra_links[0].name == "Cutout result"


def test_expand_kwargs(sandbox, airflow_db):
    dr = expand_kwargs.test()
    assert [s for s, _ in states(dr)["each"]] == ["success", "success"]
    results = xcoms(dr, "each", "cutout_result")
    assert results[0]["aspect_ratio"] == "original" and results[1]["aspect_ratio"] == "16:9"
    assert len(results[1]["reference_image_urls"]) == 1
    assert results[0]["stored_path"] is None


def test_insufficient_credits_fails_without_airflow_retry(sandbox, airflow_db, capfd):
    sandbox.reset(balance=2)
    dr = single.test(run_conf={"model": "gpt-image-1"})
    assert states(dr)["edit"] == [("failed", 1)]  # retries=2, yet one try
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 1 and ledger["credits_charged"] == 0
    out = capfd.readouterr()
    assert "failing without Airflow retries" in out.out + out.err


def test_503_burst_uses_task_retries(sandbox, airflow_db, monkeypatch, capfd):
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", sandbox.conn_json(max_retries=0))
    sandbox.fault("http_error", status=503, count=2)
    dr = single.test(run_conf={"model": "gpt-image-1"})
    assert states(dr)["edit"] == [("success", 3)]
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 3 and ledger["charges"] == 1
    out = capfd.readouterr()
    assert "task's own retries apply" in out.out + out.err


def test_invalid_rendered_value_fails_before_any_call(sandbox, airflow_db, capfd):
    dr = single.test(run_conf={"model": "gpt-image-9"})
    assert states(dr)["edit"] == [("failed", 1)]
    assert sandbox.ledger()["edit_calls"] == 0
    out = capfd.readouterr()
    assert "model='gpt-image-9' is not supported" in out.out + out.err


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": "gpt-4o"}, "model='gpt-4o' is not supported"),
        ({"aspect_ratio": "21:9"}, "aspect_ratio='21:9'"),
        ({"prompt": "  "}, "prompt='  ' is empty"),
        ({"image_urls": "http://example.com/a.png"}, "plain http"),
        ({"image_urls": [f"https://x/{i}.png" for i in range(4)], "model": "qwen-image-edit-plus"}, "at most 3"),
    ],
)
def test_static_values_validated_at_construction(kwargs, fragment):
    args = {"task_id": "t", "prompt": "blur", "image_urls": "https://x/a.png", "model": "gpt-image-1", **kwargs}
    with pytest.raises(InvalidInputError) as info:
        CutoutImageEditOperator(**args)
    assert fragment in str(info.value) and "task_id='t'" in str(info.value)


def test_templated_values_wait_for_run_time():
    # a template passes the parse-time checks and is kept to be rendered; the same field with a bad literal
    # value is refused at parse time, naming the field
    op = CutoutImageEditOperator(task_id="t", prompt="{{ params.p }}", image_urls="{{ params.u }}",
                                 model="{{ params.m }}", aspect_ratio="{{ params.r }}")
    assert (op.prompt, op.image_urls, op.model, op.aspect_ratio) == (
        "{{ params.p }}", "{{ params.u }}", "{{ params.m }}", "{{ params.r }}")
    for field, bad, named in (("model", "gpt-image-l", "model='gpt-image-l' is not supported"),
                              ("aspect_ratio", "7:5", "aspect_ratio='7:5'"),
                              ("image_urls", "ftp://x/a.png", "image_urls")):
        args = {"prompt": "blur", "image_urls": "https://x/a.png", "model": "gpt-image-1", field: bad}
        with pytest.raises(InvalidInputError, match=re.escape(named)):
            CutoutImageEditOperator(task_id=f"bad_{field}", **args)


def test_bad_static_value_is_a_dag_import_error(tmp_path, airflow_db):
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.2
        from airflow.models.dagbag import DagBag

    (tmp_path / "typo_dag.py").write_text(textwrap.dedent("""
        import datetime
        from airflow.sdk import DAG
        from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator
        with DAG("typo", schedule=None, start_date=datetime.datetime(2026, 1, 1)):
            CutoutImageEditOperator(task_id="edit", prompt="blur", image_urls="https://x/a.png",
                                    model="gpt-image-l")
    """))
    bag = DagBag(dag_folder=str(tmp_path))
    (error,) = bag.import_errors.values()
    assert "model='gpt-image-l' is not supported" in error and "task_id='edit'" in error


def test_storage_failure_after_the_edit_fails_without_retry(sandbox, airflow_db, tmp_path, capfd):
    from tests.dags.fault_dags import single  # retries=1

    sandbox.server.state.config.result_ttl = 0.0  # the result cannot be fetched once the edit is charged
    dr = single.test(run_conf={"out": str(tmp_path)})
    assert states(dr)["edit"] == [("failed", 1)]  # a retry would pay for the edit again
    assert sandbox.ledger()["charges"] == 1
    text = "".join(capfd.readouterr())
    assert "the edit itself succeeded and was charged, its URL is" in text


def test_an_output_path_that_cannot_hold_a_claim_fails_before_anything_is_sent(sandbox, airflow_db, tmp_path,
                                                                                capfd):
    from tests.dags.fault_dags import single  # retries=1

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the output folder should be")
    dr = single.test(run_conf={"out": str(blocked)})
    assert states(dr)["edit"] == [("failed", 1)] and sandbox.ledger()["edit_calls"] == 0
    assert "cannot hold the claim that keeps a retry from paying twice" in "".join(capfd.readouterr())


@pytest.mark.parametrize("into", ["folder/", "file.png"])
def test_rerun_returns_the_stored_edit_and_force_edits_again(sandbox, airflow_db, tmp_path, capfd, into):
    from tests.dags.operator_dags import stored, stored_forced

    conf = {"out": f"{tmp_path}/{into}"}
    first = xcoms(stored.test(run_conf=conf), "edit", "cutout_result")[-1]
    again_run = stored.test(run_conf=conf)
    assert states(again_run)["edit"] == [("success", 1)]
    again = xcoms(again_run, "edit", "cutout_result")[-1]
    assert again == first and xcoms(again_run, "edit")[-1] == first["image_url"]  # same XCom shape and values
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 1 and list(ledger["by_fingerprint"].values()) == [
        {"calls": 1, "charges": 1, "credits": 4}]
    assert "already stored at" in "".join(capfd.readouterr())

    forced = xcoms(stored_forced.test(run_conf=conf), "edit", "cutout_result")[-1]
    assert forced["id"] != first["id"]
    (charges,) = [v["charges"] for v in sandbox.ledger()["by_fingerprint"].values()]
    assert charges == 2  # force=True pays again, as asked

    Path(forced["stored_path"]).unlink()  # the stored copy is gone: the next run edits again
    xcoms(stored.test(run_conf=conf), "edit", "cutout_result")
    assert sandbox.ledger()["charges"] == 3


@pytest.mark.e2e  # a process of its own, signalled
def test_a_single_edit_killed_after_its_charge_is_never_paid_again_unseen(sandbox, airflow_db, tmp_path, capfd):
    """A worker killed while the edit is in flight (the API finishes and charges it): the next run finds the
    claim in the output folder, and fails saying the edit may have been charged, instead of paying again."""
    import signal

    from tests.dags.operator_dags import lamp, lamp_forced
    from tests.run_dag import spawn

    sandbox.server.state.config.latency = 2.0
    sandbox.server.state.config.charge_hung_up = True
    proc = spawn("tests.dags.operator_dags:lamp", {"out": str(tmp_path)})
    claims = tmp_path / "_cutout" / "claims"
    deadline = time.monotonic() + 120
    while not (claims.exists() and list(claims.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the request is on its way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.5)  # the API finishes the edit and charges it
    assert sandbox.ledger()["charges"] == 1
    sandbox.server.state.config.latency = 0.0
    again = lamp.test(run_conf={"out": str(tmp_path)})
    assert states(again)["edit"] == [("failed", 1)] and sandbox.ledger()["edit_calls"] == 1  # not sent again
    assert "may have been charged" in "".join(capfd.readouterr())
    forced = lamp_forced.test(run_conf={"out": str(tmp_path)})  # consent: pay again
    assert states(forced)["edit"] == [("success", 1)] and sandbox.ledger()["charges"] == 2
    assert states(lamp.test(run_conf={"out": str(tmp_path)}))["edit"] == [("success", 1)]  # stored: free
    assert charges_per_edit(sandbox) == [2]  # once unseen by the killed run, once with force=True


def test_a_result_the_store_refused_after_the_charge_is_fetched_by_the_next_run_not_paid_again(sandbox, airflow_db,
                                                                                                tmp_path, capfd):
    """Money case 9: storing the charged result fails (here its download answers one 500; a full disk takes the
    same path). Its result URL was recorded before storing, so the next run fetches and stores it, free (before:
    "may have been charged, set force=True", and force paid again)."""
    from tests.dags.operator_dags import stored_edit

    sandbox.fault("http_error", status=500, path="results")  # the store fails, after the charge
    conf = {"out": str(tmp_path), "file": "result.png"}
    assert states(stored_edit.test(run_conf=conf))["edit"] == [("failed", 1)]
    assert "the edit itself succeeded and was charged" in "".join(capfd.readouterr())
    assert not (tmp_path / "result.png").exists()
    again = stored_edit.test(run_conf=conf)
    assert calls_and_charges(sandbox) == [(1, 1)]  # never paid again
    assert states(again)["edit"] == [("success", 1)] and Image.open(tmp_path / "result.png").size[0] > 0
    assert "charged by an earlier try" in "".join(capfd.readouterr())
    assert xcoms(again, "edit", "cutout_result")[-1]["stored_path"].endswith("/result.png")
    assert states(stored_edit.test(run_conf=conf))["edit"] == [("success", 1)]  # stored: free
    assert calls_and_charges(sandbox) == [(1, 1)]


def test_a_retry_after_a_timeout_mid_edit_does_not_pay_again(sandbox, airflow_db, capfd):
    """No output_path: the task state store (Airflow 3.3+) records the intent before sending. execution_timeout
    strikes while the edit is in flight (the API finishes and charges it); the retry does not send it again."""
    import airflow

    from tests.dags.operator_dags import timed_single

    if tuple(int(p) for p in airflow.__version__.split(".")[:2]) < (3, 3):
        pytest.skip("the task state store is Airflow 3.3+; docs/cost-safety.md says what older versions lack")
    sandbox.server.state.config.latency = 3.0
    sandbox.server.state.config.charge_hung_up = True
    dr = timed_single.test()
    time.sleep(1.5)  # the first try's edit finishes on the API side
    assert states(dr)["edit"] == [("failed", 2)]
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 1 and charges_per_edit(sandbox) == [1]
    assert "may have been charged" in "".join(capfd.readouterr())


@pytest.mark.e2e  # a process of its own, signalled
def test_sigterm_during_a_retry_after_wait_sends_nothing_afterwards(sandbox, airflow_db):
    """Money case 7, the single edit: SIGTERM (on_kill) while the edit waits out a 429's Retry-After ends the wait;
    the POST is never sent (before, on_kill set a flag the sleeping thread never read, and the POST was charged)."""
    from tests.run_dag import finish, spawn

    sandbox.fault("rate_limit", retry_after=6)
    proc = spawn("tests.dags.operator_dags:stoppable_single", {})
    deadline = time.monotonic() + 120
    while not sandbox.ledger()["calls"] and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    limited = time.monotonic()  # the 429 was answered: the task waits 6 s to retry
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    run = finish(proc)
    assert run["state"] == "failed" and "StoppedError" in run["output"], run.get("log")
    time.sleep(max(0.0, limited + 7 - time.monotonic()))
    assert calls_and_charges(sandbox) == [(1, 0)]  # the 429 only
