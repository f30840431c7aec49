"""Deprecated: moved to ``airflow_provider_cutout.api.client``; this alias goes in 1.0."""

import warnings

from airflow_provider_cutout.api.client import ClientSettings, CutoutClient, parse_envelope  # noqa: F401

warnings.warn(
    "airflow_provider_cutout.client moved to airflow_provider_cutout.api.client; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
