"""Reliability and security: the fault matrix (every cell asserted from the sandbox ledger), fuzzed
invalid input that never reaches the sandbox, hostile answers, and a secret-leak scan."""

from __future__ import annotations

import io
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_provider_cutout import exceptions as exc
from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.models import ASPECT_RATIOS, MODELS
from airflow_provider_cutout.operators._common import is_dynamic
from tests.conftest import FAKE_KEY, calls_and_charges, manifest_entries, states
from tests.fault_matrix import CASES, DOC, FAIL1, OK1, OK2, Case, render

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}


def arrange(sandbox, monkeypatch, case: Case) -> None:
    sandbox.reset()
    sandbox.server.state.config.result_ttl = case.result_ttl
    for fault in case.faults:
        sandbox.fault(**fault)
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", sandbox.conn_json(**FAST, **case.extras))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matrix_hook(sandbox, monkeypatch, case):
    arrange(sandbox, monkeypatch, case)
    hook = CutoutHook()
    try:
        result = hook.edit_image("grayscale", sandbox.sample(w=48, h=40), "gpt-image-1")
        if case.result_ttl is not None:
            hook.client.download(result.image_url, io.BytesIO())
        calls = sandbox.ledger()["edit_calls"]
        outcome = "success" if calls == 1 else f"success after {calls - 1} retr{'y' if calls == 2 else 'ies'}"
    except exc.CutoutError as err:
        assert FAKE_KEY not in str(err)
        outcome = type(err).__name__ + (f" after {err.attempts} attempts" if err.attempts > 1 else "")
    assert (outcome, *the_edit(sandbox)) == case.hook


def the_edit(sandbox) -> tuple[int, int]:
    """Calls and credits of the one edit each case makes, from the ledger per request fingerprint: every edit
    call is that request (the same fingerprint), and it is charged at most once."""
    ledger = sandbox.settled_ledger()
    if not ledger["edit_calls"]:
        return 0, 0
    (counts,) = ledger["by_fingerprint"].values()
    assert counts["calls"] == ledger["edit_calls"] and counts["charges"] <= 1, ledger["by_fingerprint"]
    return counts["calls"], counts["credits"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matrix_operator(sandbox, airflow_db, monkeypatch, tmp_path, case):
    from tests.dags.fault_dags import single

    arrange(sandbox, monkeypatch, case)
    dr = single.test(run_conf={"out": str(tmp_path)})
    ((state, tries),) = states(dr)["edit"]
    outcome = {("success", 1): OK1, ("success", 2): OK2, ("failed", 1): FAIL1}[(str(state), tries)]
    assert (outcome, *the_edit(sandbox)) == case.operator
    assert not list(tmp_path.glob(".*.part"))  # nothing half-written left behind
    assert len(list(tmp_path.glob("*.png"))) == (1 if state == "success" else 0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matrix_batch(sandbox, airflow_db, monkeypatch, tmp_path, case):
    from tests.dags.fault_dags import batch

    arrange(sandbox, monkeypatch, case)
    dr = batch.test(run_conf={"out": str(tmp_path)})
    ((state, tries),) = states(dr)["edit"]
    outcome = {("success", 1): OK1, ("success", 2): OK2, ("failed", 1): FAIL1}[(str(state), tries)]
    (entry,) = manifest_entries(tmp_path).values()
    if entry["status"] == "in_doubt":
        outcome += ", item in doubt"
    elif "InsufficientCreditsError" in (entry.get("error") or ""):
        outcome += ", batch stopped"
    assert (outcome, *the_edit(sandbox)) == case.batch
    assert not list(tmp_path.glob(".*.part"))


def test_in_doubt_item_is_resent_only_with_consent(sandbox, airflow_db, monkeypatch, tmp_path, capfd):
    from tests.dags.fault_dags import batch

    arrange(sandbox, monkeypatch, next(c for c in CASES if c.name == "malformed JSON"))
    batch.test(run_conf={"out": str(tmp_path)})
    assert calls_and_charges(sandbox) == [(1, 1)]  # charged, its answer unreadable: in doubt
    again = batch.test(run_conf={"out": str(tmp_path), "resend": "false"})  # the text a run's conf gives
    assert states(again)["edit"] == [("failed", 1)] and calls_and_charges(sandbox) == [(1, 1)]  # not resent
    capfd.readouterr()
    typo = batch.test(run_conf={"out": str(tmp_path), "resend": "yes"})
    assert states(typo)["edit"] == [("failed", 1)] and calls_and_charges(sandbox) == [(1, 1)]  # refused, not true
    assert "resend_in_doubt='yes': must be True, False" in "".join(capfd.readouterr())
    other = batch.test(run_conf={"out": str(tmp_path), "resend": ["another-key"]})  # consent for other keys only
    assert states(other)["edit"] == [("failed", 1)] and calls_and_charges(sandbox) == [(1, 1)]
    consented = batch.test(run_conf={"out": str(tmp_path), "resend": ["only"]})  # its key: rendered as a list's text
    assert states(consented)["edit"] == [("success", 1)]
    assert calls_and_charges(sandbox) == [(2, 2)]  # the same request, sent once more: the price of consent


def test_reliability_doc_holds_the_matrix():
    assert render(DOC.read_text()) == DOC.read_text(), "run: python -m tests.fault_matrix"


# -- fuzzing ------------------------------------------------------------------------------------

URL = "https://example.com/a.png"
junk = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), st.binary(max_size=20),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_prompt = st.one_of(junk, st.text(alphabet=" \t\n\r\u3000\u00a0", max_size=20),
                       st.text(min_size=4001, max_size=4100), st.text(max_size=10).map(lambda t: t + "\x00"))
bad_model = st.one_of(junk, st.text(max_size=40).filter(lambda m: m not in MODELS),
                      st.sampled_from(sorted(MODELS)).map(str.upper))
bad_ratio = st.one_of(junk, st.text(max_size=10).filter(lambda r: r not in ASPECT_RATIOS),
                      st.sampled_from(["2:1", "1:2", "21:9", "4/3", " 1:1", "ORIGINAL"]))
bad_url = st.one_of(
    st.text(max_size=60).filter(lambda u: not u.startswith(("https://", "http://"))),
    st.from_regex(r"\Ahttp://[a-z]{1,10}\.(com|org|net)/[a-z]{0,8}\.png\Z"),
    st.from_regex(r"\A(ftp|file|data|javascript|gopher)://[a-z]{1,8}/x\Z"),
    st.builds(lambda s: f"https://{s}/a.png", st.text(alphabet=" <>\"{}|\\^`", min_size=1, max_size=4)),
    st.just("https://example.com:99999/a.png"), st.just("https:///nohost.png"),
    junk,
)
bad_urls = st.one_of(
    st.just([]), st.lists(bad_url, min_size=1, max_size=3),
    st.builds(lambda u: [u, u], st.just(URL)),
    st.lists(st.integers(1, 10**6).map(lambda i: f"https://x.org/{i}.png"), min_size=7, max_size=9, unique=True),
    junk.filter(lambda v: not isinstance(v, (list, str))),
)
# Each input breaks at least one field; the others may be valid or broken too.
invalid_input = st.one_of(*(
    st.fixed_dictionaries({
        "prompt": bad_prompt if broken == "prompt" else st.one_of(st.just("make it grayscale"), bad_prompt),
        "image_urls": bad_urls if broken == "image_urls" else st.one_of(st.just([URL]), bad_urls),
        "model": bad_model if broken == "model" else st.one_of(st.sampled_from(sorted(MODELS)), bad_model),
        "aspect_ratio": bad_ratio if broken == "aspect_ratio" else st.sampled_from(ASPECT_RATIOS),
    })
    for broken in ("prompt", "image_urls", "model", "aspect_ratio")
))
FIELDS = ("prompt", "image_urls", "model", "aspect_ratio", "items")
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


def clear(err: Exception) -> bool:
    text = str(err)
    return 20 < len(text) < 20000 and any(f in text for f in FIELDS) and FAKE_KEY not in text


def fuzz(strategy, check, examples: int = 1000) -> int:
    """Run ``check`` on ``examples`` generated inputs; return how many ran."""
    count = 0

    @settings(FUZZ, max_examples=examples)
    @given(value=strategy)
    def run(value):
        nonlocal count
        check(value)
        count += 1

    run()
    return count


def test_fuzz_hook_rejects_before_any_call(sandbox):
    def check(args):
        with pytest.raises(exc.InvalidInputError) as info:
            CutoutHook().edit_image(**args)
        assert clear(info.value), str(info.value)

    assert fuzz(invalid_input, check) >= 1000
    assert sandbox.ledger()["calls"] == []  # not one of them reached the sandbox


def test_fuzz_operator_rejects_at_parse_time(sandbox):
    from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator

    def check(args):
        with pytest.raises(exc.InvalidInputError) as info:
            CutoutImageEditOperator(task_id="fuzz", **args)
        assert clear(info.value) and "task_id='fuzz'" in str(info.value)

    static = invalid_input.filter(lambda a: not any("{{" in str(v) or "{%" in str(v) for v in a.values()))
    assert fuzz(static, check) >= 1000
    assert sandbox.ledger()["calls"] == []


def test_fuzz_batch_reports_every_invalid_item(sandbox):
    from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator

    def check(items):
        items = [{**item, "key": f"item-{i}"} for i, item in enumerate(items)]
        assume(not is_dynamic(items))  # Jinja in a generated prompt: checked when rendered, not at parse time
        with pytest.raises(exc.InvalidInputError) as info:
            CutoutBatchImageEditOperator(task_id="fuzz", items=items, output_dir="/tmp/fuzz/")
        assert f"{len(items)} of {len(items)} items are invalid" in str(info.value)

    assert fuzz(st.lists(invalid_input, min_size=1, max_size=5), check, examples=300) >= 300
    assert sandbox.ledger()["calls"] == []


# -- hostile answers ----------------------------------------------------------------------------

def test_huge_api_answer_is_refused_with_bounded_memory(sandbox, monkeypatch):
    import resource

    sandbox.fault("huge_body", size=200 * 1024 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(exc.ServerError, match="exceeds 8388608 bytes") as info:
        CutoutHook().edit_image("blur", sandbox.sample(w=40, h=40), "gpt-image-1")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"memory grew by {grown_mb:.0f} MB"
    assert info.value.maybe_charged and not info.value.retryable


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ({"kind": "huge_body", "size": 50 * 1024 * 1024, "path": "results"}, "did not return an image"),
        ({"kind": "redirect", "count": 20, "path": "results"}, "redirected too many times"),
        ({"kind": "http_error", "status": 404, "path": "results"}, "has expired or never existed"),
    ],
)
def test_hostile_result_downloads(sandbox, fault, fragment):
    hook = CutoutHook()
    result = hook.edit_image("blur", sandbox.sample(w=40, h=40), "gpt-image-1")
    sandbox.fault(**fault)
    sink = io.BytesIO()
    with pytest.raises(exc.ResultDownloadError, match=fragment):
        hook.client.download(result.image_url, sink)
    assert sink.tell() < 1024 * 1024


def test_result_download_size_cap_and_scheme(sandbox):
    hook = CutoutHook()
    result = hook.edit_image("blur", sandbox.sample(w=400, h=400), "gpt-image-1")
    with pytest.raises(exc.ResultDownloadError, match="over the 100-byte cap"):
        hook.client.download(result.image_url, io.BytesIO(), max_bytes=100)
    with pytest.raises(exc.ResultDownloadError, match="is not an https:// URL"):
        hook.client.download("http://example.com/a.png", io.BytesIO())
    with pytest.raises(exc.ResultDownloadError, match="is not an https:// URL"):
        hook.client.download("file:///etc/passwd", io.BytesIO())


def test_redirect_on_the_api_is_not_followed(sandbox):
    sandbox.fault("redirect", location="http://example.com/steal")
    with pytest.raises(exc.ServerError, match="HTTP 302"):
        CutoutHook().edit_image("blur", sandbox.sample(w=40, h=40), "gpt-image-1")
    assert sandbox.ledger()["credits_charged"] == 0


def test_redirected_download_does_not_carry_the_key(sandbox):
    hook = CutoutHook()
    result = hook.edit_image("blur", sandbox.sample(w=40, h=40), "gpt-image-1")
    seen: list[dict] = []
    original = sandbox.server.RequestHandlerClass.do_GET

    def spy(handler):
        seen.append(dict(handler.headers))
        original(handler)

    sandbox.server.RequestHandlerClass.do_GET = spy
    try:
        sandbox.fault("redirect", path="results", location=result.image_url + "?again=1")
        hook.client.download(result.image_url, io.BytesIO())
    finally:
        sandbox.server.RequestHandlerClass.do_GET = original
    assert len(seen) == 2 and all("APIKEY" not in h and FAKE_KEY not in str(h) for h in seen)


def test_printable_junk_in_every_string_field_is_clear():
    # a compact, deterministic companion of the fuzzers: each printable character as a model/ratio
    from airflow_provider_cutout.models import ImageEditRequest

    for ch in string.printable:
        for field_name in ("model", "aspect_ratio"):
            args = {"prompt": "p", "image_urls": URL, "model": "gpt-image-1", "aspect_ratio": "1:1", field_name: ch}
            with pytest.raises(ValueError, match=field_name):
                ImageEditRequest.build(**args)


# -- secret leak scan ---------------------------------------------------------------------------

def test_the_key_appears_nowhere(sandbox, airflow_db, monkeypatch, tmp_path, capfd):
    import pathlib

    from tests.dags.batch_dags import batch as many
    from tests.dags.fault_dags import batch, single
    from tests.dags.operator_dags import single as templated

    key = "sk-leak-canary-" + "9d41c7e2b8a6"
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT", sandbox.conn_json(key, **FAST, read_timeout=0.5))
    out = tmp_path / "out"
    runs = []
    for faults in ([], [{"kind": "insufficient_balance"}], [{"kind": "failed_edit"}], [{"kind": "drop"}],
                   [{"kind": "slow", "delay": 1.0}], [{"kind": "malformed_json"}], [{"kind": "unknown_code"}]):
        for dag in (single, batch):
            sandbox.reset()
            for fault in faults:
                sandbox.fault(**fault)
            runs.append(dag.test(run_conf={"out": str(out / f"{dag.dag_id}-{len(runs)}")}))
    sandbox.reset()
    sandbox.server.state.config.result_ttl = 0.0  # storing fails after a charged edit
    runs.append(single.test(run_conf={"out": str(out / "expired")}))
    sandbox.reset()
    sandbox.server.state.config.api_key = "another-key"  # 401
    try:
        runs.append(single.test(run_conf={"out": str(out / "unauthorized")}))
    finally:
        sandbox.server.state.config.api_key = None
    runs.append(templated.test(run_conf={"model": "gpt-image-9"}))  # invalid rendered input
    runs.append(many.test(run_conf={"n": 3, "out": str(out / "many"), "changed": "", "invalid": True}))
    runs.append(many.test(run_conf={"n": 5, "out": str(out / "many"), "changed": "", "invalid": False}))
    ok, failed = [sum(s == wanted for r in runs for v in states(r).values() for s, _ in v) for wanted in
                  ("success", "failed")]
    assert ok >= 10 and failed >= 8, "the runs must cover success and failure paths"

    captured = capfd.readouterr()
    places: dict[str, bytes] = {"stdout": captured.out.encode(), "stderr": captured.err.encode()}
    for root in (pathlib.Path(airflow_db), tmp_path):
        for path in root.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes()
    assert any(p.endswith("airflow.db") for p in places) and any("_cutout/manifest" in p for p in places)
    assert any(b"Cutout" in data for data in places.values())  # the failures were really logged
    leaks = [where for where, data in places.items() if key.encode() in data]
    assert not leaks, f"the API key leaked into {leaks}"
    assert len(places) >= 20, f"only {len(places)} places were checked"
    print(f"leak scan: {len(runs)} DAG runs, {len(places)} places checked, key found in none")
