"""The settings of a ``cutout`` connection: its base URL and the timeouts and retries in its extras.

One pydantic declaration gives the defaults, the coercion of values typed into the connection form,
the errors naming an unknown or invalid extra, and the form's fields (``conn_fields``). Pure
pydantic: no Airflow, no HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_provider_cutout.api.urls import DEFAULT_BASE_URL, normalise_base_url
from airflow_provider_cutout.exceptions import InvalidInputError
from airflow_provider_cutout.texts import format_validation_error

__all__ = ["ClientSettings", "conn_fields"]


def _field(default: Any, label: str, description: str, **limits: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"label": label}, **limits)


class ClientSettings(BaseModel):
    """Timeouts and retry settings; every field but ``base_url`` can be set in the connection's extras."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(default=DEFAULT_BASE_URL, description="Scheme, host and optional port of the API.")
    connect_timeout: float = _field(10.0, "Connect timeout (s)", "Seconds to wait for a TCP connection.", gt=0)
    read_timeout: float = _field(300.0, "Read timeout (s)", "Seconds to wait for an answer; edits can take minutes.",
                                 gt=0)
    max_retries: int = _field(3, "Max retries", "Retries after the first attempt, for 429, 502-504 and connection "
                              "failures.", ge=0)
    backoff_base: float = _field(1.0, "Backoff base (s)", "First wait between retries, doubled per retry (with "
                                 "jitter).", ge=0)
    backoff_max: float = _field(30.0, "Backoff cap (s)", "Longest wait between two retries.", gt=0)
    retry_after_max: float = _field(120.0, "Retry-After cap (s)", "Longest wait a Retry-After header may ask for.",
                                    gt=0)
    rate_limit_patience: float = _field(600.0, "Rate limit patience (s)", "Seconds the account may answer 429 to "
                                        "every edit before the task fails; while it accepts some, a 429 is only "
                                        "waited out.", gt=0)
    retry_on_read_timeout: bool = _field(False, "Resend an edit after a read timeout", "Off by default: the first "
                                         "request may already have been charged, so a resend can charge twice.")
    pool_size: int = _field(16, "Connection pool size", "Connections kept alive; raise it for concurrent batches.",
                            ge=1)
    max_download_bytes: int = _field(100 * 1024 * 1024, "Largest result (bytes)", "Largest result image the "
                                     "provider will download.", ge=1)
    check_sources: bool = _field(True, "Check source images first", "Read each source's first bytes before an edit "
                                 "is paid for (reachable, JPEG or PNG, the model's size limits); operators may "
                                 "override it.")
    source_timeout: float = _field(20.0, "Source check timeout (s)", "Seconds one source check may take.", gt=0)
    signed_url_expiry: int = _field(3600, "Signed source URL expiry (s)", "Seconds the signed URLs of s3:// and "
                                    "gs:// sources stay valid; longer than the read timeout.", gt=0)

    @model_validator(mode="after")
    def _expiry_covers_an_edit(self) -> ClientSettings:
        if self.signed_url_expiry < self.read_timeout + 60:
            raise ValueError(f"signed_url_expiry={self.signed_url_expiry} must be at least read_timeout + 60 s "
                             f"({self.read_timeout + 60:g}): the API fetches signed sources while the edit runs")
        return self

    @field_validator("base_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalise_base_url(value)

    @classmethod
    def from_extras(cls, base_url: str | None, extras: Mapping[str, Any]) -> ClientSettings:
        """Build settings from a connection's extras, naming any unknown or invalid key.

        :param base_url: the connection's base URL, or ``None`` for the public API.
        :param extras: the connection's extra JSON as a dict.
        """
        known = ", ".join(name for name in cls.model_fields if name != "base_url")
        if "base_url" in extras:
            raise InvalidInputError("connection extra 'base_url' is not a setting of the cutout connection: put the "
                                    f"URL in the Base URL field; known extras: {known}")
        try:
            return cls.model_validate({**extras, "base_url": base_url or DEFAULT_BASE_URL})
        except ValidationError as err:
            problems = format_validation_error(err, unknown="is not a setting of the cutout connection")
            raise InvalidInputError(f"connection extras: {problems}; known extras: {known}") from None


def conn_fields() -> dict[str, Any]:
    """The connection form's extra fields, from the settings' JSON schema (each optional: empty keeps the
    default, which the description states)."""
    fields = {}
    for name, prop in ClientSettings.model_json_schema()["properties"].items():
        if name == "base_url":
            continue
        schema = {"type": [prop["type"], "null"]}
        schema.update({key: prop[key] for key in ("minimum", "exclusiveMinimum") if key in prop})
        default = str(prop["default"]).lower() if prop["type"] == "boolean" else f"{prop['default']:g}"
        fields[name] = {"label": prop["label"], "description": f"{prop['description']} Default {default}.",
                        "schema": schema}
    return fields
