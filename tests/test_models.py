"""Every validation rule of ``ImageEditRequest`` and the response models: plain Python, no Airflow."""

from __future__ import annotations

import pytest

from airflow_provider_cutout.models import (
    ASPECT_RATIOS,
    MODELS,
    CreditBalance,
    ImageEditRequest,
    ImageEditResult,
    is_loopback_url,
)

URL = "https://example.com/a.jpg"


def build(**kw):
    args = {"prompt": "make it grayscale", "image_urls": [URL], "model": "gpt-image-1"}
    args.update(kw)
    return ImageEditRequest.build(**args)


def test_registry_matches_the_vendor_table():
    assert {name: (m.credits, m.max_images) for name, m in MODELS.items()} == {
        "gpt-image-1": (4, 6),
        "gemini-2.5-flash-image": (4, 6),
        "gemini-3-pro-image-preview": (15, 6),
        "seedream-4.0": (4, 6),
        "qwen-image-edit-plus": (4, 3),
    }
    assert all(m.aspect_ratios == ASPECT_RATIOS for m in MODELS.values())
    assert MODELS["seedream-4.0"].source_limits.min_pixels == 921_600


def test_valid_request_payload_and_single_string_url():
    req = build(image_urls=URL, aspect_ratio="16:9", prompt="  blur it  ")
    assert req.image_urls == (URL,)
    assert req.prompt == "blur it"
    assert req.payload() == {"prompt": "blur it", "model": "gpt-image-1", "aspectRatios": "16:9", "imageUrl": [URL]}
    assert req.credits == 4
    assert build(model="gemini-3-pro-image-preview").credits == 15


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"prompt": ""}, ["prompt=''", "empty", "describe the edit"]),
        ({"prompt": "   \n"}, ["prompt=", "empty"]),
        ({"prompt": None}, ["prompt must be a string", "NoneType"]),
        ({"prompt": "x" * 5000}, ["5000 characters", "at most 4000"]),
        ({"model": "gpt-5"}, ["model='gpt-5'", "not supported", "gpt-image-1"]),
        ({"aspect_ratio": "2:1"}, ["aspect_ratio='2:1'", "use one of", "16:9"]),
        ({"image_urls": []}, ["image_urls is empty", "at least one"]),
        ({"image_urls": None}, ["image_urls must be a URL or a list", "NoneType"]),
        ({"image_urls": [URL + str(i) for i in range(7)]}, ["has 7 URLs", "at most 6"]),
        ({"image_urls": [URL + str(i) for i in range(4)], "model": "qwen-image-edit-plus"}, ["has 4", "at most 3"]),
        ({"image_urls": ["not a url"]}, ["image_urls[0]='not a url'", "not a valid URL", "https://"]),
        ({"image_urls": ["ftp://example.com/a.png"]}, ["image_urls[0]", "not a valid URL"]),
        ({"image_urls": ["https://exa mple.com/a.png"]}, ["not a valid URL"]),
        ({"image_urls": ["https://example.com:99999/a.png"]}, ["not a valid URL"]),
        ({"image_urls": [URL, 5]}, ["image_urls[1] must be a string URL", "int"]),
        ({"image_urls": ["http://example.com/a.jpg"]}, ["plain http", "HTTPS only", "https://"]),
        ({"image_urls": [URL, URL]}, ["image_urls[1]", "repeats image_urls[0]", "listed once"]),
    ],
)
def test_invalid_requests_name_field_value_and_fix(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        build(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as info:
        ImageEditRequest.build("", [], "nope", "5:4")
    text = str(info.value)
    assert "prompt" in text and "image_urls" in text and "model='nope'" in text and "aspect_ratio='5:4'" in text


def test_plain_http_allowed_only_on_loopback_with_loopback_base():
    loop = "http://127.0.0.1:8080/samples/mug.png"
    with pytest.raises(ValueError, match="plain http"):
        build(image_urls=[loop])  # no base URL: the real API
    with pytest.raises(ValueError, match="plain http"):
        ImageEditRequest.build("p", [loop], "gpt-image-1", base_url="https://www.cutout.pro")
    with pytest.raises(ValueError, match="plain http"):
        ImageEditRequest.build("p", ["http://example.com/a.png"], "gpt-image-1", base_url="http://localhost:1")
    ok = ImageEditRequest.build("p", [loop, "http://[::1]:9/x.png"], "gpt-image-1", base_url="http://localhost:1")
    assert len(ok.image_urls) == 2


def test_is_loopback_url():
    assert is_loopback_url("http://127.0.0.5:1/x") and is_loopback_url("http://localhost/x")
    assert is_loopback_url("http://[::1]/") and not is_loopback_url("http://10.0.0.1/")
    assert not is_loopback_url("https://www.cutout.pro") and not is_loopback_url(None)


def test_fingerprint_is_stable_and_sensitive():
    a = build(image_urls=[URL, URL + "2"])
    assert a.fingerprint == build(image_urls=[URL, URL + "2"]).fingerprint
    assert len(a.fingerprint) == 64
    changed = [build(image_urls=[URL + "2", URL]), build(prompt="other", image_urls=[URL, URL + "2"]),
               build(model="seedream-4.0", image_urls=[URL, URL + "2"]),
               build(aspect_ratio="1:1", image_urls=[URL, URL + "2"])]
    assert len({a.fingerprint, *(c.fingerprint for c in changed)}) == 5


def test_fingerprint_matches_the_sandbox_definition():
    from airflow_provider_cutout.sandbox.state import fingerprint

    req = build(prompt="ünïcode ✓ prompt")
    assert req.fingerprint == fingerprint(req.payload())


def test_result_parses_api_fields_and_tolerates_unknown_ones():
    data = {
        "id": 789012345678901, "userId": 657890123456789, "imageUrl": "https://cdn.cutout.pro/e/1.jpg",
        "prompt": "Remove the background", "model": "qwen-image-edit-plus", "aspectRatios": "original",
        "referenceImageUrl": ["https://cdn.cutout.pro/u/1.jpg"], "status": 1, "failReason": None,
        "deleted": 0, "duration": "11.43", "createdAt": 1763547221159, "brandNewField": {"x": 1},
    }
    res = ImageEditResult.model_validate(data)
    assert res.id == "789012345678901" and res.duration == 11.43 and res.credits == 4
    assert res.image_url.endswith("1.jpg") and res.reference_image_urls == ["https://cdn.cutout.pro/u/1.jpg"]
    xcom = res.to_xcom()
    assert xcom["id"] == "789012345678901" and xcom["duration"] == 11.43 and xcom["credits"] == 4
    assert all(isinstance(v, (str, int, float, list, type(None))) for v in xcom.values())


def test_credit_balance():
    bal = CreditBalance.model_validate({"monthBalance": 10, "imageBalance": 2.5, "videoBalance": 1, "x": 0})
    assert bal.total == 12.5


def test_failed_edit_result_with_null_fields_parses():
    # a failed edit may carry null imageUrl/model; it must parse, so the client raises FailedEditError
    result = ImageEditResult.model_validate({"id": 1, "status": 0, "imageUrl": None, "model": None,
                                             "failReason": "Face not found", "duration": ""})
    assert result.image_url == "" and result.fail_reason == "Face not found" and result.duration is None
