"""Deprecated: moved to ``airflow_provider_cutout.observability.lineage``; this alias goes in 1.0."""

import warnings

from airflow_provider_cutout.observability.lineage import CutoutEditRunFacet, batch_lineage, single_edit_lineage  # noqa: F401

warnings.warn(
    "airflow_provider_cutout.lineage moved to airflow_provider_cutout.observability.lineage; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
