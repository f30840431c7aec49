"""Deprecated: moved to ``airflow_provider_cutout.api.settings``; this alias goes in 1.0."""

import warnings

from airflow_provider_cutout.api.settings import ClientSettings, conn_fields  # noqa: F401

warnings.warn(
    "airflow_provider_cutout.settings moved to airflow_provider_cutout.api.settings; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
