"""The API's data, at the import path users and DAGs already have (``airflow_provider_cutout.models``): a
re-export of ``api.models``, with the source rules of ``api.sources`` and the URL policy of ``api.urls``."""

from airflow_provider_cutout.api.models import (
    ASPECT_RATIOS,
    MODELS,
    CreditBalance,
    ImageEditRequest,
    ImageEditResult,
    ModelSpec,
    SourceImageLimits,
)
from airflow_provider_cutout.api.sources import SourceInfo, source_problems
from airflow_provider_cutout.api.urls import DEFAULT_BASE_URL, is_loopback_url, is_object_store_uri
from airflow_provider_cutout.texts import format_validation_error

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_BASE_URL",
    "MODELS",
    "CreditBalance",
    "ImageEditRequest",
    "ImageEditResult",
    "ModelSpec",
    "SourceImageLimits",
    "SourceInfo",
    "format_validation_error",
    "is_loopback_url",
    "is_object_store_uri",
    "source_problems",
]
