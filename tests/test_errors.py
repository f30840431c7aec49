"""Every error mapping of ``parse_envelope`` and the exception tree: plain Python, no Airflow."""

from __future__ import annotations

import json

import pytest
import requests

from airflow_provider_cutout import exceptions as exc
from airflow_provider_cutout.api.envelope import parse_envelope
from airflow_provider_cutout.api.settings import ClientSettings


def response(status: int, body, headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r.headers.update(headers or {})
    return r


def env(code, msg="", data=None, **extra):
    return {"code": code, "data": data, "msg": msg, "time": 1, "requestId": "rid-1", **extra}


def test_success_returns_data():
    assert parse_envelope(response(200, env(0, data={"x": 1}))) == {"x": 1}


@pytest.mark.parametrize(
    ("status", "body", "cls", "retryable", "fragment"),
    [
        (401, env(401, "Invalid API key"), exc.AuthenticationError, False, "API Key"),
        (403, b"forbidden", exc.AuthenticationError, False, "rejected the API key"),
        (200, env(1001, "Insufficient balance"), exc.InsufficientCreditsError, False, "top up"),
        (429, env(429, "slow down"), exc.RateLimitError, True, "rate limit"),
        (500, env(500, "boom"), exc.ServerError, True, "boom"),
        (502, b"<html>bad gateway</html>", exc.ServerError, True, "bad gateway"),
        (200, b"<html>oops</html>", exc.ServerError, True, "not the API's JSON envelope"),
        (200, b'{"code": 0, "data": {', exc.ServerError, True, "not the API's JSON envelope"),
        (200, env(9999, "mystery"), exc.CutoutAPIError, False, "mystery"),
        (400, env(400, "Unsupported model: x"), exc.BadRequestError, False, "Unsupported model"),
    ],
)
def test_error_mapping(status, body, cls, retryable, fragment):
    with pytest.raises(exc.CutoutError) as info:
        parse_envelope(response(status, body))
    err = info.value
    assert type(err) is cls
    assert err.retryable is retryable
    assert fragment in str(err)
    assert err.http_status == status
    if isinstance(body, dict):
        assert err.code == body["code"] and err.request_id == "rid-1" and "request_id=rid-1" in str(err)


def test_http_200_with_error_code_is_an_error():
    with pytest.raises(exc.InsufficientCreditsError) as info:
        parse_envelope(response(200, env(1001, "Insufficient balance")))
    assert info.value.code == 1001 and info.value.server_message == "Insufficient balance"


def test_retry_after_parsed():
    with pytest.raises(exc.RateLimitError) as info:
        parse_envelope(response(429, env(429), {"Retry-After": "7"}))
    assert info.value.retry_after == 7.0


def test_tree_and_retryability():
    assert issubclass(exc.CutoutTimeoutError, exc.CutoutConnectionError)
    assert issubclass(exc.InvalidInputError, ValueError)
    for cls in (exc.AuthenticationError, exc.InsufficientCreditsError, exc.FailedEditError,
                exc.RateLimitError, exc.ServerError, exc.BadRequestError):
        assert issubclass(cls, exc.CutoutAPIError) and issubclass(cls, exc.CutoutError)
    assert exc.CutoutConnectionError("x").retryable and not exc.InvalidInputError("x").retryable
    assert not exc.CutoutTimeoutError("x", retryable=False).retryable
    assert str(exc.ServerError("down", attempts=4)) == "down (after 4 attempts)"


def test_settings_from_extras():
    s = ClientSettings.from_extras("http://127.0.0.1:9/", {"read_timeout": "12.5", "max_retries": 1,
                                                           "retry_on_read_timeout": "true"})
    assert (s.base_url, s.read_timeout, s.max_retries, s.retry_on_read_timeout) == ("http://127.0.0.1:9", 12.5, 1, True)
    assert ClientSettings.from_extras(None, {}).base_url == "https://www.cutout.pro"
    with pytest.raises(exc.InvalidInputError, match="headers is not a setting of the cutout connection; known"):
        ClientSettings.from_extras(None, {"headers": {"X": "1"}})
    with pytest.raises(exc.InvalidInputError, match="read_timeout='soon': input should be a valid number"):
        ClientSettings.from_extras(None, {"read_timeout": "soon"})
    with pytest.raises(exc.InvalidInputError, match="read_timeout=0: input should be greater than 0"):
        ClientSettings.from_extras(None, {"read_timeout": 0})
    with pytest.raises(exc.InvalidInputError, match=r"'base_url' is not a setting .* Base URL field"):
        ClientSettings.from_extras(None, {"base_url": "https://elsewhere"})
    with pytest.raises(ValueError, match="frozen"):
        s.read_timeout = 1  # type: ignore[misc]
