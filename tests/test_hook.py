"""CutoutHook over real HTTP against the sandbox: success, every error class, retries, secrecy."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from airflow_provider_cutout import exceptions as exc
from airflow_provider_cutout.api.client import CutoutClient
from airflow_provider_cutout.api.settings import ClientSettings
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.models import ImageEditRequest
from tests.conftest import FAKE_KEY


def edit(hook: CutoutHook, sandbox, **kw):
    args = {"prompt": "grayscale", "image_urls": [sandbox.sample(w=64, h=48)], "model": "gpt-image-1"}
    args.update(kw)
    return hook.edit_image(**args)


def use_conn(monkeypatch, sandbox, key=FAKE_KEY, **extra):
    extra = {"backoff_base": 0.01, "backoff_max": 0.05, **extra}
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", sandbox.conn_json(key, **extra))
    return CutoutHook()


def test_connection_from_env_var_and_success(sandbox):
    hook = CutoutHook()
    assert hook.base_url == sandbox.url
    res = edit(hook, sandbox, aspect_ratio="1:1")
    assert res.status == 1 and res.aspect_ratio == "1:1" and res.credits == 4 and res.request_id
    assert res.image_url.startswith(sandbox.url + "/results/")
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 1 and ledger["credits_charged"] == 4 and ledger["balance"] == 996


def test_balance_and_test_connection(sandbox):
    hook = CutoutHook()
    assert hook.get_credit_balance().total == 1000
    ok, message = CutoutHook().test_connection()
    assert ok and "1000 image credits" in message and sandbox.url in message
    assert sandbox.ledger()["credits_charged"] == 0


def test_wrong_key_fails_test_connection(sandbox, monkeypatch):
    sandbox.server.state.config.api_key = "the-right-key"
    try:
        hook = use_conn(monkeypatch, sandbox, key=FAKE_KEY)
        ok, message = hook.test_connection()
        assert not ok and "rejected the API key" in message and FAKE_KEY not in message
        with pytest.raises(exc.AuthenticationError) as info:
            edit(use_conn(monkeypatch, sandbox, key=FAKE_KEY), sandbox)
        assert info.value.http_status == 401 and info.value.attempts == 1
    finally:
        sandbox.server.state.config.api_key = None


def test_missing_key_is_rejected_before_any_call(sandbox, monkeypatch):
    hook = use_conn(monkeypatch, sandbox, key="")
    with pytest.raises(exc.InvalidInputError, match="no API key"):
        edit(hook, sandbox)
    assert sandbox.ledger()["calls"] == []


def test_invalid_input_spends_nothing(sandbox):
    with pytest.raises(exc.InvalidInputError, match="model='dall-e'"):
        edit(CutoutHook(), sandbox, model="dall-e")
    with pytest.raises(exc.InvalidInputError, match="plain http"):
        edit(CutoutHook(), sandbox, image_urls=["http://example.com/a.png"])
    assert sandbox.ledger()["calls"] == []


@pytest.mark.parametrize(
    ("fault", "cls", "fragment"),
    [
        ({"kind": "insufficient_balance"}, exc.InsufficientCreditsError, "Insufficient balance"),
        ({"kind": "failed_edit", "fail_reason": "NSFW content"}, exc.FailedEditError, "NSFW content"),
        ({"kind": "unknown_code", "code": 4242, "msg": "odd"}, exc.CutoutAPIError, "code=4242"),
        ({"kind": "http_error", "status": 500}, exc.ServerError, "server error"),
        ({"kind": "malformed_json"}, exc.ServerError, "may have been charged"),
    ],
)
def test_single_attempt_errors(sandbox, fault, cls, fragment):
    sandbox.fault(**fault)
    with pytest.raises(cls) as info:
        edit(CutoutHook(), sandbox)
    assert fragment in str(info.value) and info.value.attempts == 1
    assert sandbox.ledger()["edit_calls"] == 1


def test_insufficient_credits_for_real(sandbox):
    sandbox.reset(balance=3)
    with pytest.raises(exc.InsufficientCreditsError):
        edit(CutoutHook(), sandbox)
    assert sandbox.ledger()["credits_charged"] == 0


def test_failed_edit_carries_reason(sandbox):
    sandbox.fault("failed_edit", fail_reason="Face not found")
    with pytest.raises(exc.FailedEditError) as info:
        edit(CutoutHook(), sandbox)
    assert info.value.fail_reason == "Face not found" and not info.value.retryable


def retry_lines(capfd) -> list[str]:
    """Airflow's logging writes to the process's stdout/stderr: read the retry lines there."""
    out = capfd.readouterr()
    return [line for line in (out.out + out.err).splitlines() if "; retry " in line]


def test_retries_honour_retry_after_then_succeed(sandbox, capfd):
    sandbox.fault("rate_limit", count=2, retry_after=0.3)
    res = edit(CutoutHook(), sandbox)
    assert res.status == 1
    out = capfd.readouterr()
    waits = [line for line in (out.out + out.err).splitlines() if "every edit of this task waits" in line]
    assert len(waits) == 2 and "rate limit" in waits[0] and "waits 0.3 s" in waits[0]  # the governor's pauses
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 3 and ledger["charges"] == 1


def counting_client(sandbox, **settings):
    """A client whose waits between attempts are counted through its ``sleep`` seam, not slept."""
    waits: list[float] = []
    return CutoutClient(FAKE_KEY, ClientSettings(base_url=sandbox.url, **settings), sleep=waits.append), waits


def a_request(sandbox):
    return ImageEditRequest.build("grayscale", [sandbox.sample(w=64, h=48)], "gpt-image-1", base_url=sandbox.url)


def test_waits_honour_retry_after_up_to_its_cap(sandbox):
    """A 429 pauses the task's edits for its Retry-After, up to retry_after_max (the governor's pause)."""
    sandbox.fault("rate_limit", count=2, retry_after=30)
    client, waits = counting_client(sandbox, retry_after_max=0.5)
    started = time.monotonic()
    assert client.edit_image(a_request(sandbox)).status == 1
    assert 1.0 <= time.monotonic() - started < 10  # 0.5 s twice: the server asked for 30 s each time
    sandbox.fault("rate_limit", count=1, retry_after=0.4)
    started = time.monotonic()
    client.edit_image(a_request(sandbox))
    assert 0.4 <= time.monotonic() - started < 5
    assert waits == [0.0, 0.0, 0.0]  # no backoff of its own: the governor paused each 429
    assert sandbox.ledger()["edit_calls"] == 5 and sandbox.ledger()["charges"] == 2


def test_backoff_doubles_with_jitter_up_to_its_cap_then_gives_up(sandbox):
    sandbox.fault("http_error", status=503, count=10)
    client, waits = counting_client(sandbox, max_retries=4, backoff_base=1.0, backoff_max=4.0)
    with pytest.raises(exc.ServerError) as info:
        client.edit_image(a_request(sandbox))
    assert info.value.attempts == 5 and len(waits) == 4
    for wait, cap in zip(waits, [1.0, 2.0, 4.0, 4.0], strict=True):
        assert cap / 2 <= wait <= cap, waits
    assert sandbox.ledger()["edit_calls"] == 5 and sandbox.ledger()["charges"] == 0


def test_no_wait_before_an_error_that_is_not_retried(sandbox):
    sandbox.fault("insufficient_balance")
    client, waits = counting_client(sandbox)
    with pytest.raises(exc.InsufficientCreditsError):
        client.edit_image(a_request(sandbox))
    assert waits == [] and sandbox.ledger()["edit_calls"] == 1


def test_503_is_retried_and_bounded(sandbox, monkeypatch):
    sandbox.fault("http_error", status=503, count=10)
    with pytest.raises(exc.ServerError) as info:
        edit(use_conn(monkeypatch, sandbox, max_retries=2), sandbox)
    assert info.value.attempts == 3 and "after 3 attempts" in str(info.value) and not info.value.maybe_charged
    assert sandbox.ledger()["edit_calls"] == 3 and sandbox.ledger()["credits_charged"] == 0


@pytest.mark.parametrize(("kind", "status"), [("http_error", 500), ("http_error", 502), ("http_error", 504),
                                              ("html_error", 502), ("html_error", 524)])
@pytest.mark.parametrize("charged", [False, True])
def test_an_edit_answered_by_a_gateway_error_is_never_resent(sandbox, monkeypatch, kind, status, charged):
    sandbox.fault(kind, status=status, count=10, after_edit=charged)
    with pytest.raises(exc.ServerError) as info:
        edit(use_conn(monkeypatch, sandbox, max_retries=3), sandbox)
    err = info.value
    assert err.maybe_charged and not err.retryable and err.attempts == 1 and err.http_status == status
    assert "may have been charged" in str(err)
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 1 and ledger["charges"] == int(charged)  # one call: never a second charge


def test_a_read_answered_by_a_gateway_error_is_retried(sandbox):
    sandbox.fault("http_error", status=504, count=1, path="balance")
    assert CutoutHook().get_credit_balance().total > 0
    assert [c["path"] for c in sandbox.ledger()["calls"]] == ["balance", "balance"]


def test_no_resend_after_read_timeout(sandbox, monkeypatch):
    sandbox.fault("slow", delay=1.0)
    hook = use_conn(monkeypatch, sandbox, read_timeout=0.3)
    with pytest.raises(exc.CutoutTimeoutError) as info:
        edit(hook, sandbox)
    assert not info.value.retryable and info.value.request_sent and info.value.attempts == 1
    assert "may have been charged" in str(info.value) and info.value.maybe_charged
    time.sleep(1.0)
    ledger = sandbox.ledger()
    assert ledger["edit_calls"] == 1 and ledger["charges"] == 1  # charged once, never resent


def test_resend_after_read_timeout_when_asked(sandbox, monkeypatch):
    sandbox.fault("slow", delay=1.0)
    hook = use_conn(monkeypatch, sandbox, read_timeout=0.5, retry_on_read_timeout=True)
    assert edit(hook, sandbox).status == 1
    time.sleep(0.8)
    assert sandbox.ledger()["charges"] == 2  # the documented price of opting in


def test_dropped_connection_after_send_not_resent(sandbox):
    sandbox.fault("drop", after_edit=True)
    with pytest.raises(exc.CutoutConnectionError) as info:
        edit(CutoutHook(), sandbox)
    assert info.value.request_sent and not info.value.retryable and "may have been charged" in str(info.value)
    assert sandbox.ledger()["edit_calls"] == 1


def test_refused_connection_retried_and_bounded(monkeypatch, sandbox, capfd):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_CUTOUT_DEFAULT",
        f'{{"conn_type": "cutout", "host": "http://127.0.0.1:{port}", "password": "{FAKE_KEY}",'
        ' "extra": {"backoff_base": 0.01, "max_retries": 2}}',
    )
    with pytest.raises(exc.CutoutConnectionError) as info:  # the API is down, so its source check is skipped
        CutoutHook().edit_image("blur", [f"http://127.0.0.1:{port}/a.png"], "gpt-image-1", check_sources=False)
    assert not info.value.request_sent and info.value.attempts == 3
    assert len(retry_lines(capfd)) == 2


def test_balance_get_retried_after_read_timeout(sandbox, monkeypatch, capfd):
    sandbox.fault("slow", delay=1.0, path="balance")  # a GET may be resent: its first answer comes too late
    hook = use_conn(monkeypatch, sandbox, read_timeout=0.3)
    started = time.monotonic()
    assert hook.get_credit_balance().total == 1000
    assert time.monotonic() - started < 1.0  # the second request answered; the first was not waited for
    time.sleep(1.0)  # the slow handler finishes
    assert [(c["path"], c["outcome"]) for c in sandbox.ledger()["calls"]] == [("balance", "ok")] * 2
    assert len(retry_lines(capfd)) == 1


def test_result_download_retried_after_read_timeout(sandbox, monkeypatch, tmp_path, capfd):
    import io

    hook = use_conn(monkeypatch, sandbox, read_timeout=0.3)
    result = edit(hook, sandbox)
    sandbox.fault("slow", delay=1.0, path="results")
    sink = io.BytesIO()
    size, extension = hook.get_conn().download(result.image_url, sink)
    assert extension == ".png" and size == len(sink.getvalue()) > 0
    results = [c["outcome"] for c in sandbox.ledger()["calls"] if c["path"] == "results"]
    assert results == ["fault:slow"] and len(retry_lines(capfd)) == 1  # timed out once, read on the retry
    assert sandbox.ledger()["charges"] == 1


def test_host_without_scheme_and_separate_port(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", '{"conn_type": "cutout", "host": "127.0.0.1", "port": 8080}')
    assert CutoutHook().base_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", '{"conn_type": "cutout"}')
    assert CutoutHook().base_url == "https://www.cutout.pro"
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", '{"conn_type": "cutout", "host": "api.example.com"}')
    assert CutoutHook().base_url == "https://api.example.com"
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT",
                       '{"conn_type": "cutout", "host": "https://www.cutout.pro", "port": 443}')
    assert CutoutHook().base_url == "https://www.cutout.pro:443"
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT",
                       '{"conn_type": "cutout", "host": "http://127.0.0.1:8080", "port": 9999}')
    assert CutoutHook().base_url == "http://127.0.0.1:8080"  # a port in the Base URL wins


def test_unknown_extra_rejected(monkeypatch, sandbox):
    hook = use_conn(monkeypatch, sandbox, headers={"X-Debug": "1"})
    with pytest.raises(exc.InvalidInputError, match="headers is not a setting"):
        hook.get_credit_balance()


def test_key_absent_from_logs_and_errors(sandbox, caplog, capfd, monkeypatch):
    hook = use_conn(monkeypatch, sandbox, max_retries=1, read_timeout=0.3)
    texts = []
    with caplog.at_level(logging.DEBUG):
        sandbox.fault("rate_limit", count=2, retry_after=0.1)
        edit(hook, sandbox)  # two 429s, then the edit: a 429 is retried while the account accepts edits
        for fault in ({"kind": "http_error", "status": 503, "count": 5},
                      {"kind": "insufficient_balance"}, {"kind": "failed_edit"}, {"kind": "malformed_json"},
                      {"kind": "slow", "delay": 0.6}, {"kind": "drop"}, {"kind": "unknown_code"}):
            sandbox.reset()
            sandbox.fault(**fault)
            with pytest.raises(exc.CutoutError) as info:
                edit(hook, sandbox)
            texts += [str(info.value), repr(info.value), repr(vars(info.value))]
        edit(hook, sandbox)
    out = capfd.readouterr()
    texts += [r.getMessage() for r in caplog.records] + [caplog.text, repr(hook.client), out.out, out.err]
    assert "; retry 1 of 1" in out.out + out.err  # the logs were really captured
    assert texts and not [t for t in texts if FAKE_KEY in t]


def test_ui_field_behaviour_matches_provider_info():
    from airflow_provider_cutout.get_provider_info import get_provider_info

    behaviour = CutoutHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API Key", "port": "Port (optional)"}
    assert set(behaviour["hidden_fields"]) == {"schema", "login"}
    conn_type = get_provider_info()["connection-types"][0]
    assert conn_type["connection-type"] == "cutout"
    assert conn_type["ui-field-behaviour"]["relabeling"] == behaviour["relabeling"]



def test_a_missing_or_wrong_type_connection_says_how_to_define_it(sandbox, monkeypatch):
    with pytest.raises(exc.MissingConnectionError) as missing:
        CutoutHook("cutout-prod").base_url  # noqa: B018
    assert "'cutout-prod' is not defined" in str(missing.value) and "AIRFLOW_CONN_CUTOUT_PROD=" in str(missing.value)
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_HTTP", '{"conn_type": "http", "host": "https://example.com"}')
    with pytest.raises(exc.MissingConnectionError, match="has type 'http', not 'cutout'"):
        CutoutHook("cutout_http").base_url  # noqa: B018


def test_a_stop_ends_a_retry_wait_sends_nothing_and_says_whether_an_earlier_attempt_may_have_been_charged(
        sandbox, monkeypatch):
    """With retry_on_read_timeout (consent to resend), the first POST timed out after it was charged; a stop
    during the backoff ends the wait at once, nothing more is sent, and the error says it may have been charged
    (so a batch records the item in doubt, not free). Reads still go out after a stop: they cost nothing."""
    import threading

    sandbox.fault("slow", delay=1.0)
    hook = use_conn(monkeypatch, sandbox, read_timeout=0.3, retry_on_read_timeout=True, backoff_base=30,
                    backoff_max=30)
    caught: list[BaseException] = []

    def send() -> None:
        try:
            edit(hook, sandbox)
        except BaseException as err:
            caught.append(err)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)  # the first POST timed out; the retry waits ~15-30 s
    hook.stop()
    sender.join(timeout=5)
    assert not sender.is_alive(), "the stop did not end the wait"
    (err,) = caught
    assert isinstance(err, exc.StoppedError) and err.maybe_charged and not err.retryable
    assert sandbox.settled_ledger()["edit_calls"] == 1  # the first POST only
    assert hook.get_credit_balance().total == 996  # a read after the stop: still answered


def test_after_a_batch_stops_sending_edits_a_download_still_waits_out_its_backoff(sandbox, monkeypatch):
    """A batch that met an error every further edit would meet (insufficient credits, say) sends no more edits,
    but the results already paid for are still fetched: their retries wait as usual (a review found they burnt
    every retry at once, so a CDN's short outage lost a paid result)."""
    import io

    hook = use_conn(monkeypatch, sandbox, backoff_base=0.4, backoff_max=0.4)
    result = edit(hook, sandbox)
    hook.client.edits_stopped.set()  # what a batch's Progress.stop_with sets
    with pytest.raises(exc.StoppedError):
        edit(hook, sandbox)  # no edit is sent any more
    sandbox.fault("http_error", status=503, count=2, path="results")
    started = time.monotonic()
    assert hook.client.download(result.image_url, io.BytesIO())[0] > 0
    assert time.monotonic() - started >= 0.4  # two waits of 0.2 to 0.4 s, not cut short
    assert sandbox.ledger()["edit_calls"] == 1
