"""Typed data of the Cutout.Pro Image Edit API: the model registry, requests, results, balances.

Pure pydantic v2 and the standard library: no Airflow, no HTTP. Everything that can be known before
spending a credit is checked here, so every layer above validates in one place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from airflow_provider_cutout.api.urls import check_source_url, is_loopback_url
from airflow_provider_cutout.texts import format_validation_error, shorten

ASPECT_RATIOS: tuple[str, ...] = ("original", "1:1", "4:3", "3:4", "9:16", "16:9")
MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class SourceImageLimits:
    """Limits a model puts on each source image; checked by the service on the downloaded image."""

    max_bytes: int
    min_pixels: int
    max_side: int
    min_side_exclusive: int
    min_aspect: float
    max_aspect: float


@dataclass(frozen=True)
class ModelSpec:
    """One row of the registry: what a model costs and accepts."""

    name: str
    credits: int
    max_images: int
    aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
    source_limits: SourceImageLimits | None = None


SEEDREAM_LIMITS = SourceImageLimits(
    max_bytes=10 * 1024 * 1024,
    min_pixels=921_600,
    max_side=6000,
    min_side_exclusive=14,
    min_aspect=1 / 3,
    max_aspect=3.0,
)

#: The single source of truth for models, prices and limits (the vendor's table).
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("gpt-image-1", credits=4, max_images=6),
        ModelSpec("gemini-2.5-flash-image", credits=4, max_images=6),
        ModelSpec("gemini-3-pro-image-preview", credits=15, max_images=6),
        ModelSpec("seedream-4.0", credits=4, max_images=6, source_limits=SEEDREAM_LIMITS),
        ModelSpec("qwen-image-edit-plus", credits=4, max_images=3),
    )
}

def check_prompt(value: Any) -> str:
    """A prompt, stripped; a ``ValueError`` names what is wrong with it (not text, empty, too long, a NUL)."""
    if not isinstance(value, str):
        raise ValueError(f"prompt must be a string, got {type(value).__name__} {shorten(value)}")
    if not value.strip():
        raise ValueError(f"prompt={shorten(value)} is empty: describe the edit, e.g. 'remove the background'")
    if len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"prompt has {len(value)} characters; shorten it to at most {MAX_PROMPT_CHARS}"
        )
    if "\x00" in value:
        raise ValueError("prompt contains a NUL character; remove it")
    return value.strip()


class ImageEditRequest(BaseModel):
    """One edit, validated before any credit is spent.

    Plain ``http`` image URLs are accepted only when the validation context says the base URL is
    loopback (``context={"base_url": ...}``) and the image URL is loopback too; without a context
    they are rejected, as the real API would. ``image_urls`` also accepts a single string.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    image_urls: tuple[str, ...]
    model: str
    aspect_ratio: str = "original"
    #: the content version of each source (the digest of its bytes, from the source checks); part of the
    #: fingerprint, never sent
    source_versions: tuple[str, ...] = ()
    #: what asks each source's server whether it changed (ETag, Last-Modified and size); recorded, never part of
    #: the fingerprint (a server may change them while the bytes stay the same), never sent
    source_validators: tuple[str, ...] = ()
    #: each source's version as releases before sources were hashed whole gave it (ETag, Last-Modified and size,
    #: or a hash of the first 128 KiB): what finds the edits they recorded; never part of the fingerprint
    legacy_versions: tuple[str, ...] = ()

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> str:
        return check_prompt(value)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> str:
        if not isinstance(value, str) or value not in MODELS:
            raise ValueError(f"model={shorten(value)} is not supported; use one of {', '.join(MODELS)}")
        return value

    @field_validator("aspect_ratio", mode="before")
    @classmethod
    def _ratio(cls, value: Any) -> str:
        if not isinstance(value, str) or value not in ASPECT_RATIOS:
            raise ValueError(
                f"aspect_ratio={shorten(value)} is not supported; use one of {', '.join(ASPECT_RATIOS)}"
            )
        return value

    @field_validator("image_urls", mode="before")
    @classmethod
    def _urls(cls, value: Any, info: ValidationInfo) -> tuple[str, ...]:
        if isinstance(value, str) or (hasattr(value, "protocol") and hasattr(value, "sign")):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(
                f"image_urls must be a URL or a list of URLs, got {type(value).__name__} {shorten(value)}"
            )
        if not value:
            raise ValueError("image_urls is empty: give at least one https:// URL of a source image")
        base_url = (info.context or {}).get("base_url")
        allow_http = is_loopback_url(base_url)
        urls = tuple(check_source_url(url, i, allow_http) for i, url in enumerate(value))
        seen: dict[str, int] = {}
        for i, url in enumerate(urls):
            if url in seen:
                raise ValueError(
                    f"image_urls[{i}]={shorten(url)} repeats image_urls[{seen[url]}]; "
                    "each source image must be listed once"
                )
            seen[url] = i
        return urls

    @model_validator(mode="after")
    def _fits_model(self) -> ImageEditRequest:
        spec = MODELS[self.model]
        if len(self.image_urls) > spec.max_images:
            raise ValueError(
                f"image_urls has {len(self.image_urls)} URLs but model={self.model!r} accepts at most "
                f"{spec.max_images}; drop some or pick a model that takes more"
            )
        if self.aspect_ratio not in spec.aspect_ratios:
            raise ValueError(
                f"aspect_ratio={self.aspect_ratio!r} is not allowed for model={self.model!r}; "
                f"use one of {', '.join(spec.aspect_ratios)}"
            )
        return self

    @classmethod
    def build(
        cls,
        prompt: Any,
        image_urls: Any,
        model: Any,
        aspect_ratio: Any = "original",
        *,
        base_url: str | None = None,
    ) -> ImageEditRequest:
        """Validate and build a request, raising ``ValueError`` with one line per problem.

        :param base_url: the API base URL the request will go to; decides whether loopback
            ``http`` image URLs are acceptable (only when the base URL is loopback too).
        """
        try:
            return cls.model_validate(
                {"prompt": prompt, "image_urls": image_urls, "model": model, "aspect_ratio": aspect_ratio},
                context={"base_url": base_url},
            )
        except ValidationError as err:
            raise ValueError(format_validation_error(err)) from None

    @property
    def credits(self) -> int:
        """Credits this edit costs when it succeeds."""
        return MODELS[self.model].credits

    def payload(self) -> dict[str, Any]:
        """The JSON body the API expects."""
        return {
            "prompt": self.prompt,
            "model": self.model,
            "aspectRatios": self.aspect_ratio,
            "imageUrl": list(self.image_urls),
        }

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical payload and the sources' versions: equal for equal edits of the same
        source images, whatever the key order; a photo replaced under the same URL changes it."""
        body = self.payload()
        if self.source_versions:
            body["sourceVersions"] = list(self.source_versions)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def unversioned_fingerprint(self) -> str:
        """The fingerprint without the sources' versions: how edits were keyed before versions (and are
        with ``check_sources`` off)."""
        return self.model_copy(update={"source_versions": ()}).fingerprint

    def with_versions(self, versions: dict[str, tuple[str, str, str]]) -> ImageEditRequest:
        """This request with its sources' versions, validators and legacy versions (``url -> (version,
        validator, legacy)``); unchanged when any version is unknown."""
        found = [versions.get(url, ("", "", "")) for url in self.image_urls]
        if not all(version for version, _, _ in found):
            return self
        return self.model_copy(update={"source_versions": tuple(f[0] for f in found),
                                       "source_validators": tuple(f[1] for f in found),
                                       "legacy_versions": tuple(f[2] for f in found)})

    def legacy_request(self) -> ImageEditRequest | None:
        """This edit under its sources' legacy versions (how releases before sources were hashed whole keyed
        it), when they are known and differ; else ``None``."""
        legacy = self.legacy_versions
        if not (legacy and all(legacy)) or legacy == self.source_versions:
            return None
        return self.model_copy(update={"source_versions": legacy})


class _Response(BaseModel):
    """Response models accept unknown fields: a new API field never breaks an old client."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ImageEditResult(_Response):
    """The ``data`` of a successful edit, in snake_case (camelCase aliases match the API)."""

    id: str
    image_url: str = Field(default="", alias="imageUrl")  # empty on a failed edit
    model: str = ""
    aspect_ratio: str = Field(default="original", alias="aspectRatios")
    reference_image_urls: list[str] = Field(default_factory=list, alias="referenceImageUrl")
    prompt: str = ""
    status: int = 1
    fail_reason: str | None = Field(default=None, alias="failReason")
    user_id: str | None = Field(default=None, alias="userId")
    deleted: int = 0
    duration: float | None = None
    created_at: int | None = Field(default=None, alias="createdAt")
    request_id: str | None = Field(default=None, alias="requestId")

    @field_validator("id", "user_id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        # Ids are 15+ digit integers: keep them as text so JSON consumers never round them.
        return str(value) if isinstance(value, int) else value

    @field_validator("image_url", "model", "prompt", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @property
    def credits(self) -> int:
        """Credits the model charges per successful edit (0 for an unknown model)."""
        spec = MODELS.get(self.model)
        return spec.credits if spec else 0

    def to_xcom(self) -> dict[str, Any]:
        """A plain JSON-able dict for XCom."""
        return {
            "id": self.id,
            "image_url": self.image_url,
            "model": self.model,
            "aspect_ratio": self.aspect_ratio,
            "reference_image_urls": list(self.reference_image_urls),
            "duration": self.duration,
            "credits": self.credits,
            "request_id": self.request_id,
        }


class CreditBalance(_Response):
    """The account's credits, from ``GET /api/v1/mySubscription``."""

    month_balance: float = Field(default=0, alias="monthBalance")
    image_balance: float = Field(default=0, alias="imageBalance")
    video_balance: float = Field(default=0, alias="videoBalance")
    month_start_date: Any = Field(default=None, alias="monthStartDate")
    month_expire_date: Any = Field(default=None, alias="monthExpireDate")

    @property
    def total(self) -> float:
        """Credits usable for image edits: the monthly allowance plus pay-as-you-go credits."""
        return self.month_balance + self.image_balance
