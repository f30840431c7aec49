"""The sandbox over real HTTP: endpoints, checks, edits, ledger, faults, concurrency, CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from airflow_provider_cutout.sandbox import FAULT_KINDS, SandboxConfig, run_sandbox
from airflow_provider_cutout.sandbox.__main__ import parse_config
from tests.conftest import FAKE_KEY, Sandbox

HEADERS = {"APIKEY": FAKE_KEY}


def post_edit(sandbox, prompt="grayscale", urls=None, model="gpt-image-1", ratio="original", headers=HEADERS):
    body = {"prompt": prompt, "model": model, "aspectRatios": ratio, "imageUrl": urls or [sandbox.sample(w=120, h=80)]}
    return requests.post(f"{sandbox.url}/api/v1/image/edit", json=body, headers=headers, timeout=30)


def fetch_image(url: str) -> Image.Image:
    r = requests.get(url, timeout=10)
    r.raise_for_status()
    return Image.open(io.BytesIO(r.content))


def test_edit_envelope_and_result(sandbox):
    r = post_edit(sandbox, prompt="Remove the background", ratio="16:9")
    body = r.json()
    assert r.status_code == 200 and body["code"] == 0 and body["msg"] == "" and len(body["requestId"]) == 32
    data = body["data"]
    assert set(data) >= {"id", "userId", "imageUrl", "prompt", "model", "aspectRatios", "referenceImageUrl",
                         "status", "failReason", "deleted", "duration", "createdAt"}
    assert data["status"] == 1 and isinstance(data["duration"], str) and isinstance(data["id"], int)
    img = fetch_image(data["imageUrl"])
    assert img.format == "PNG" and img.mode == "RGBA"
    assert abs(img.width / img.height - 16 / 9) < 0.02
    assert img.getpixel((0, 0))[3] == 0  # background removed to transparency


@pytest.mark.parametrize("ratio", ["original", "1:1", "4:3", "3:4", "9:16", "16:9"])
def test_output_follows_ratio(sandbox, ratio):
    data = post_edit(sandbox, urls=[sandbox.sample("chair", w=300, h=200)], ratio=ratio).json()["data"]
    img = fetch_image(data["imageUrl"])
    expected = 300 / 200 if ratio == "original" else (lambda a, b: a / b)(*map(int, ratio.split(":")))
    assert abs(img.width / img.height - expected) < 0.02


def test_deterministic_output(sandbox):
    urls = [sandbox.sample("mug", w=90, h=90), sandbox.sample("lamp", "jpg", w=60, h=90)]
    a = post_edit(sandbox, "sepia and blur and mirror", urls, ratio="4:3").json()["data"]["imageUrl"]
    b = post_edit(sandbox, "sepia and blur and mirror", urls, ratio="4:3").json()["data"]["imageUrl"]
    assert a != b
    assert requests.get(a, timeout=5).content == requests.get(b, timeout=5).content


@pytest.mark.parametrize(
    "prompt", ["grayscale", "blur", "sharpen", "invert", "mirror", "rotate", "brighten", "darken", "sepia",
               "remove the background", "white background"],
)
def test_every_keyword_changes_the_image(sandbox, prompt):
    src = sandbox.sample("sneaker", w=80, h=60)
    plain = fetch_image(post_edit(sandbox, "keep it as it is", [src]).json()["data"]["imageUrl"])
    edited = fetch_image(post_edit(sandbox, prompt, [src]).json()["data"]["imageUrl"])
    assert edited.tobytes() != plain.tobytes() or edited.mode != plain.mode
    ops = sandbox.ledger()["calls"][-1]["operations"]
    assert len(ops) == 1


def test_several_references_are_composed(sandbox):
    urls = [sandbox.sample("mug", w=100, h=100), sandbox.sample("watch", w=50, h=100)]
    img = fetch_image(post_edit(sandbox, "keep", urls).json()["data"]["imageUrl"])
    assert img.size == (150, 100)


def test_local_images_folder(tmp_path):
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "green.png")
    with run_sandbox(SandboxConfig(images_dir=str(tmp_path))) as server:
        url = f"{server.base_url}/images/green.png"
        body = {"prompt": "invert", "model": "gpt-image-1", "aspectRatios": "original", "imageUrl": [url]}
        data = requests.post(f"{server.base_url}/api/v1/image/edit", json=body, headers=HEADERS, timeout=10).json()
        assert fetch_image(data["data"]["imageUrl"]).getpixel((1, 1))[:3] == (245, 55, 245)
        assert requests.get(f"{server.base_url}/images/../state.py", timeout=5).status_code == 404


@pytest.mark.parametrize(
    ("body_patch", "fragment"),
    [
        ({"model": "dall-e"}, "Unsupported model"),
        ({"aspectRatios": "2:1"}, "Unsupported aspectRatios"),
        ({"prompt": " "}, "prompt is required"),
        ({"imageUrl": []}, "non-empty array"),
        ({"model": "qwen-image-edit-plus", "imageUrl": [f"https://h/{i}.png" for i in range(4)]}, "at most 3"),
        ({"imageUrl": ["http://example.com/a.png"]}, "must be an https URL"),
        ({"imageUrl": ["https://example.com/a.png"]}, "host example.com is unreachable"),
    ],
)
def test_server_side_checks_answer_envelopes(sandbox, body_patch, fragment):
    body = {"prompt": "blur", "model": "gpt-image-1", "aspectRatios": "original", "imageUrl": [sandbox.sample()]}
    body.update(body_patch)
    r = requests.post(f"{sandbox.url}/api/v1/image/edit", json=body, headers=HEADERS, timeout=10)
    assert r.status_code == 400 and r.json()["code"] != 0 and fragment in r.json()["msg"]
    assert sandbox.ledger()["credits_charged"] == 0


def test_not_an_image_and_unsupported_format(sandbox):
    r = post_edit(sandbox, urls=[f"{sandbox.url}/__sandbox__/health"])
    assert r.status_code == 400 and "not a JPEG or PNG" in r.json()["msg"]


@pytest.mark.parametrize(
    ("size", "ok", "fragment"),
    [
        ({"w": 1280, "h": 720}, True, ""),
        ({"w": 1000, "h": 900}, False, "fewer than 921600 pixels"),
        ({"w": 3300, "h": 1000}, False, "aspect ratio 3.300"),
        ({"w": 6100, "h": 2100}, False, "exceeds 6000x6000"),
    ],
)
def test_seedream_limits_measured_on_the_download(sandbox, size, ok, fragment):
    r = post_edit(sandbox, urls=[sandbox.sample("bottle", "jpg", **size)], model="seedream-4.0")
    assert (r.json()["code"] == 0) is ok
    assert fragment in r.json()["msg"]


def test_api_key_required_and_configured_key(sandbox):
    assert post_edit(sandbox, headers={}).status_code == 401
    assert requests.get(f"{sandbox.url}/api/v1/mySubscription", timeout=5).json()["code"] == 401
    sandbox.server.state.config.api_key = "right"
    try:
        assert post_edit(sandbox).status_code == 401
        assert post_edit(sandbox, headers={"APIKEY": "right"}).json()["code"] == 0
    finally:
        sandbox.server.state.config.api_key = None


def test_balance_and_ledger(sandbox):
    sandbox.reset(balance=19)
    r = requests.get(f"{sandbox.url}/api/v1/mySubscription", headers=HEADERS, timeout=5).json()
    assert r["code"] == 0 and r["data"]["imageBalance"] == 19 and "monthBalance" in r["data"]
    assert post_edit(sandbox, model="gemini-3-pro-image-preview").json()["code"] == 0
    again = post_edit(sandbox, model="gemini-3-pro-image-preview").json()
    assert again["code"] == 1001 and again["msg"] == "Insufficient balance" and again["data"] is None
    post_edit(sandbox, model="qwen-image-edit-plus")
    ledger = sandbox.ledger()
    assert ledger["balance"] == 0 and ledger["credits_charged"] == 19 and ledger["charges"] == 2
    assert [c["outcome"] for c in ledger["calls"] if c["path"] == "edit"] == ["charged", "rejected", "charged"]
    fps = ledger["by_fingerprint"]
    assert sorted(v["calls"] for v in fps.values()) == [1, 2]


def test_result_ttl_expires_urls(sandbox):
    sandbox.server.state.config.result_ttl = 1.5
    url = post_edit(sandbox).json()["data"]["imageUrl"]
    assert requests.get(url, timeout=5).status_code == 200
    time.sleep(1.6)
    assert requests.get(url, timeout=5).status_code == 404


def test_latency_emulation_per_model(sandbox):
    sandbox.server.state.config.latency = {"gpt-image-1": 1.5, "default": 0.0}
    started = time.monotonic()
    post_edit(sandbox)
    assert time.monotonic() - started >= 1.5
    started = time.monotonic()
    post_edit(sandbox, model="seedream-4.0", urls=[sandbox.sample(w=1280, h=720)])
    assert time.monotonic() - started < 1.5  # no emulated latency: only the real edit's time


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ({"kind": "rate_limit", "retry_after": 2}, lambda r: r.status_code == 429 and r.headers["Retry-After"] == "2"),
        ({"kind": "http_error", "status": 503}, lambda r: r.status_code == 503 and r.json()["code"] == 503),
        ({"kind": "html_error"}, lambda r: r.status_code == 502 and r.text.startswith("<!DOCTYPE html>")),
        ({"kind": "insufficient_balance"}, lambda r: r.status_code == 200 and r.json()["code"] == 1001),
        ({"kind": "unknown_code", "code": 7}, lambda r: r.json()["code"] == 7),
        ({"kind": "failed_edit", "fail_reason": "x"}, lambda r: r.json()["data"]["status"] == 0
         and r.json()["data"]["failReason"] == "x"),
        ({"kind": "malformed_json"}, lambda r: r.status_code == 200 and "<<garbled" in r.text),
        ({"kind": "slow", "delay": 0.3}, lambda r: r.elapsed.total_seconds() >= 0.3 and r.json()["code"] == 0),
    ],
)
def test_each_fault(sandbox, spec, check):
    sandbox.fault(**spec)
    assert check(post_edit(sandbox))
    assert post_edit(sandbox).json()["code"] == 0  # a fault strikes the next N requests only


def test_charged_faults_are_charged_and_others_not(sandbox):
    charged = {"slow": {"delay": 0.01}, "malformed_json": {}, "truncated_body": {}, "drop": {"after_edit": True}}
    for kind in FAULT_KINDS:
        if kind == "huge_body":
            continue
        sandbox.reset()
        sandbox.fault(kind, **charged.get(kind, {}))
        try:
            post_edit(sandbox)
        except requests.RequestException:
            pass
        assert sandbox.ledger()["credits_charged"] == (4 if kind in charged else 0), kind


def test_drop_and_truncated_body(sandbox):
    sandbox.fault("drop")  # before the work: no answer, nothing charged
    with pytest.raises(requests.ConnectionError):
        post_edit(sandbox)
    (dropped,) = sandbox.ledger()["calls"]
    assert (dropped["outcome"], dropped["credits"]) == ("fault:drop", 0)
    sandbox.fault("truncated_body")  # after the work: charged, and half an answer
    with pytest.raises(requests.RequestException):
        post_edit(sandbox).json()
    ledger = sandbox.ledger()
    assert [(c["outcome"], c["credits"]) for c in ledger["calls"]] == [("fault:drop", 0), ("charged", 4)]
    assert ledger["charges"] == 1 and ledger["balance"] == 996


def test_an_edit_is_counted_when_it_arrives_and_reset_waits_for_it(sandbox):
    """A count read while an edit runs sees it (in flight, not charged yet); a reset waits for it to finish, so
    its charge never lands in the next ledger."""
    import threading

    sandbox.server.state.config.latency = 1.0
    answer: list[requests.Response] = []
    sender = threading.Thread(target=lambda: answer.append(post_edit(sandbox)))
    sender.start()
    deadline = time.monotonic() + 5
    while sandbox.ledger()["edit_calls"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    ledger = sandbox.ledger()
    (call,) = ledger["calls"]
    assert (ledger["edit_calls"], ledger["charges"], call["outcome"]) == (1, 0, "in_flight")
    assert ledger["by_fingerprint"][call["fingerprint"]] == {"calls": 1, "charges": 0, "credits": 0}
    sandbox.reset()
    sender.join(timeout=10)
    assert answer[0].json()["code"] == 0  # the edit was done and charged, before the reset
    assert sandbox.ledger() == {"balance": 1000, "edit_calls": 0, "charges": 0, "credits_charged": 0,
                                "rate_limited": 0, "calls": [], "by_fingerprint": {}, "source_reads": {},
                                "source_bytes": {}, "source_log": {}}


def test_faults_on_other_paths_and_bad_fault_spec(sandbox):
    sandbox.fault("http_error", status=500, path="balance")
    assert requests.get(f"{sandbox.url}/api/v1/mySubscription", headers=HEADERS, timeout=5).status_code == 500
    r = requests.post(f"{sandbox.url}/__sandbox__/faults", json={"faults": [{"kind": "meteor"}]}, timeout=5)
    assert r.status_code == 400 and "unknown fault kind 'meteor'" in r.json()["msg"]


def test_unknown_route_is_an_envelope(sandbox):
    r = requests.get(f"{sandbox.url}/nope", timeout=5)
    assert r.status_code == 404 and r.json()["code"] == 404


def test_64_concurrent_edits(sandbox):
    sandbox.server.state.config.latency = 0.5
    urls = [sandbox.sample("mug", w=64, h=64 + i) for i in range(64)]
    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        bodies = list(pool.map(lambda u: post_edit(sandbox, urls=[u]).json(), urls))
    elapsed = time.monotonic() - started
    assert all(b["code"] == 0 for b in bodies)
    assert len({b["data"]["id"] for b in bodies}) == 64
    assert elapsed < 0.5 * 64 / 4  # all in flight together, not one after another
    assert sandbox.ledger()["charges"] == 64


def test_account_rate_limit_from_the_config():
    """A token bucket per account: a burst of 12 at 5 a second with a burst of 5 gets 5 edits done and 7 answered
    429 (with Retry-After, not charged, in the ledger); a second later the bucket is full again."""
    with run_sandbox(SandboxConfig(rate_limit=5, rate_burst=5)) as server:
        box = Sandbox(server)
        urls = [box.sample("mug", w=32, h=32 + i) for i in range(17)]
        gate = threading.Barrier(12)

        def send(url: str) -> requests.Response:
            gate.wait(timeout=5)
            return post_edit(box, urls=[url])

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, urls[:12]))
        done = [r for r in answers if r.status_code == 200]
        limited = [r for r in answers if r.status_code == 429]
        assert len(done) == 5 and all(r.json()["code"] == 0 for r in done)
        assert len(limited) == 7
        for r in limited:  # the API's 429, as the scripted rate_limit fault answers it
            body = r.json()
            assert (body["code"], body["data"], body["msg"]) == (429, None, "Too many requests")
            assert int(r.headers["Retry-After"]) >= 1
        ledger = box.ledger()
        assert (ledger["edit_calls"], ledger["charges"], ledger["rate_limited"]) == (12, 5, 7)
        assert (ledger["credits_charged"], ledger["balance"]) == (20, 980)
        over = [c for c in ledger["calls"] if c["outcome"] == "rate_limited"]
        assert len(over) == 7 and all(c["credits"] == 0 and c["retry_after"] >= 1 and c["fingerprint"] for c in over)
        assert all(abs(c["at"] - time.time()) < 60 for c in ledger["calls"])  # when each was answered
        # only the paid edit is limited: the balance and the results answer with the bucket empty
        assert requests.get(f"{box.url}/api/v1/mySubscription", headers=HEADERS, timeout=5).status_code == 200
        assert requests.get(done[0].json()["data"]["imageUrl"], timeout=5).status_code == 200

        time.sleep(1.1)
        with ThreadPoolExecutor(5) as pool:
            again = list(pool.map(lambda u: post_edit(box, urls=[u]), urls[12:]))
        assert [r.status_code for r in again] == [200] * 5 and all(r.json()["code"] == 0 for r in again)
        ledger = box.ledger()
        assert (ledger["charges"], ledger["rate_limited"], ledger["balance"]) == (10, 7, 960)

        box.reset()  # without rate_limit: back to the limit the sandbox was started with
        assert (server.state.config.rate_limit, server.state.config.burst) == (5, 5)
        assert box.ledger()["rate_limited"] == 0


def test_account_rate_limit_set_and_removed_by_a_reset(sandbox):
    def reset(**body: object) -> requests.Response:
        return requests.post(f"{sandbox.url}/__sandbox__/reset", json=body, timeout=30)

    assert reset(rate_limit=1).status_code == 200  # burst: the rate, so 1
    assert post_edit(sandbox).json()["code"] == 0
    sandbox.fault("http_error", status=503)
    second = post_edit(sandbox)
    assert second.status_code == 429 and second.headers["Retry-After"] == "1"
    pending = requests.get(f"{sandbox.url}/__sandbox__/faults", timeout=5).json()["faults"]
    assert [f["kind"] for f in pending] == ["http_error"]  # a scripted fault is not used up by the account's 429
    ledger = sandbox.ledger()
    assert [c["outcome"] for c in ledger["calls"]] == ["charged", "rate_limited"]
    assert (ledger["charges"], ledger["rate_limited"]) == (1, 1)

    assert reset(rate_limit=None).status_code == 200
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda h: post_edit(sandbox, urls=[sandbox.sample(w=32, h=h)]), range(32, 38)))
    assert [r.status_code for r in answers] == [200] * 6
    ledger = sandbox.ledger()
    assert (ledger["charges"], ledger["rate_limited"]) == (6, 0)

    for bad in ({"rate_limit": 0}, {"rate_limit": -1}, {"rate_burst": 3}, {"rate_limit": 2, "rate_burst": 0.5},
                {"rate_limit": "fast"}):
        answer = reset(**bad)
        assert answer.status_code == 400 and "Bad sandbox request" in answer.json()["msg"], bad


def test_rate_limit_options_of_the_command_line():
    assert parse_config([])[0].rate_limit is None
    config, _ = parse_config(["--rate-limit", "10"])
    assert (config.rate_limit, config.rate_burst, config.burst) == (10, None, 10)
    config, _ = parse_config(["--rate-limit", "0.5", "--rate-burst", "3"])
    assert (config.rate_limit, config.burst) == (0.5, 3)
    assert parse_config(["--rate-limit", "0.2"])[0].burst == 1  # at least 1
    for bad in (["--rate-burst", "3"], ["--rate-limit", "0"], ["--rate-limit", "2", "--rate-burst", "0"]):
        with pytest.raises(SystemExit):
            parse_config(bad)


def test_cli_starts_serves_and_stops():
    proc = subprocess.Popen([sys.executable, "-m", "airflow_provider_cutout.sandbox", "--port", "0",
                             "--balance", "12", "--rate-limit", "0.5", "--rate-burst", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(proc.stdout.readline())
        url = started["sandbox"]
        assert (started["rate_limit"], started["rate_burst"]) == (0.5, 2)
        r = requests.get(f"{url}/api/v1/mySubscription", headers=HEADERS, timeout=5).json()
        assert r["data"]["imageBalance"] == 12
        body = {"prompt": "blur", "model": "qwen-image-edit-plus", "aspectRatios": "original",
                "imageUrl": [f"{url}/samples/mug.png?w=32&h=32"]}
        answers = [requests.post(f"{url}/api/v1/image/edit", json=body, headers=HEADERS, timeout=10)
                   for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]  # a burst of 2, then a token every 2 s
        assert answers[2].headers["Retry-After"] == "2"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_any_sample_name_is_a_distinct_repeatable_photo(sandbox):
    def get(path):
        return requests.get(f"{sandbox.url}/samples/{path}", timeout=5)

    photos = {get(f"sku-{i:04d}.png").content for i in range(30)}
    assert len(photos) == 30  # a trial catalog of 30 products needs no invented ?w= variants
    jpeg = get("sku-0007.jpg").content
    assert jpeg == get("sku-0007.jpg").content and jpeg[:3] == b"\xff\xd8\xff"
    assert get("mug.png").content != get("sku-0001.png").content
    for bad in ("gone/nothing.png", "sku-1.gif", "a%20b.png"):
        assert get(bad).status_code == 404


def test_samples_answer_conditional_requests_and_replacing_a_photo_changes_its_validators(sandbox):
    url = f"{sandbox.url}/samples/sku-0003.png?w=64&h=48"
    first = requests.get(url, timeout=5)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=5).status_code == 304
    assert requests.get(url, headers={"If-Modified-Since": modified}, timeout=5).status_code == 304
    bare = requests.get(url + "&validators=none", timeout=5)
    assert "ETag" not in bare.headers and "Last-Modified" not in bare.headers
    answers = [requests.post(f"{sandbox.url}/__sandbox__/photos", json={"name": "sku-0003.png", "w": 64, "h": 48},
                             timeout=5).json()["version"] for _ in range(2)]
    assert answers == [2, 3]  # each call replaces the photo again
    again = requests.get(url, headers={"If-None-Match": etag}, timeout=5)
    assert again.status_code == 200 and again.content != first.content and again.headers["ETag"] != etag
    assert requests.get(url, headers={"If-Modified-Since": modified}, timeout=5).status_code == 200
    assert sandbox.ledger()["source_reads"] == {"200": 4, "304": 2}


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "KeyError"), ({"name": "sku-0007"}, "with its extension"), ({"name": "a.png", "version": "x"}, "ValueError"),
])
def test_replacing_a_photo_that_no_url_serves_is_refused(sandbox, body, fragment):
    answer = requests.post(f"{sandbox.url}/__sandbox__/photos", json=body, timeout=5)
    assert answer.status_code == 400 and fragment in answer.json()["msg"]
