"""Deprecated: moved to ``airflow_provider_cutout.observability.links``; this alias goes in 1.0."""

import warnings

from airflow_provider_cutout.observability.links import (  # noqa: F401
              RESULT_XCOM_KEY,
              CutoutGalleryLink,
              CutoutResultLink,
              gallery_link,
)

warnings.warn(
    "airflow_provider_cutout.links moved to airflow_provider_cutout.observability.links; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
