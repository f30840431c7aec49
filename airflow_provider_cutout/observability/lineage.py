"""OpenLineage for both operators: source images in, stored results out, and a run facet with the model,
the edits and the credits. Imported only from the operators' ``get_openlineage_facets_on_complete``, which
the openlineage provider calls, so that provider stays optional.

Dataset names follow OpenLineage's naming: ``https://host`` + path for web sources, ``s3://bucket`` + key
for object stores, ``file`` + path for local files. A URL's query (where signatures live) is never kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.openlineage.facet import Dataset, RunFacet
from airflow.providers.openlineage.extractors import OperatorLineage
from attrs import define, field

Lineage = OperatorLineage[Dataset, RunFacet]

DOCS = "https://github.com/airflow-provider-cutout/airflow-provider-cutout/blob/main/docs/observability.md"
MAX_GROUPS = 100


@define
class CutoutEditRunFacet(RunFacet):
    """What one task spent: the model, the edits it paid for, the credits, and (for a single edit) the API's
    request id. A batch carries its counts (``edited``, ``skipped``, ``failed``...), never a list per item."""

    model: str
    edits: int
    credits: int
    requestIds: list[str] = field(factory=list)
    counts: dict[str, int] = field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return f"{DOCS}#openlineage"


def dataset_of(location: str) -> tuple[str, str]:
    """The OpenLineage (namespace, name) of a URL, an object-store URI (``s3://conn_id@bucket/key`` too) or
    a local path; never the query string or credentials."""
    parts = urlsplit(str(location))
    if parts.scheme in ("", "file", "local"):
        return "file", parts.path
    host = parts.netloc.rpartition("@")[2]  # ObjectStoragePath's conn_id@bucket, or user:password@host
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{host}", parts.path or "/"
    return f"{parts.scheme}://{host}", parts.path.lstrip("/") or "/"


def source_groups(urls: Iterable[str], limit: int = MAX_GROUPS) -> list[Dataset]:
    """Input datasets for a catalog's sources: one per folder of a host or bucket (a catalog's photos are
    a few folders, not 100,000 datasets); beyond ``limit`` folders, one per host or bucket."""
    folders: set[tuple[str, str]] = set()
    for url in urls:
        namespace, name = dataset_of(url)
        folders.add((namespace, name.rsplit("/", 1)[0] or "/"))
    if len(folders) > limit:
        folders = {(namespace, "/") for namespace, _ in folders}
    return [Dataset(namespace=namespace, name=name) for namespace, name in sorted(folders)]


def datasets(locations: Iterable[str]) -> list[Dataset]:
    """One dataset per location (a single edit's sources or stored copy)."""
    return [Dataset(namespace=ns, name=name) for ns, name in dict.fromkeys(dataset_of(x) for x in locations)]


def single_edit_lineage(sources: list[str], stored_path: str | None, result: dict[str, Any]) -> Lineage:
    """The lineage of one edit: its sources, its stored copy (when kept), model, credits, request id."""
    request_ids = [str(result["request_id"])] if result.get("request_id") else []
    facet = CutoutEditRunFacet(model=str(result.get("model") or ""), edits=1,
                               credits=int(result.get("credits") or 0), requestIds=request_ids)
    return OperatorLineage(inputs=datasets(sources), outputs=datasets([stored_path] if stored_path else []),
                           run_facets={"cutout_edit": facet})


def batch_lineage(sources: Iterable[str], output_dir: str, model: str, summary: dict[str, Any]) -> Lineage:
    """The lineage of a batch: its source folders, its output folder, and the run's counts."""
    counts = {key: int(summary.get(key) or 0)
              for key in ("total", "edited", "skipped", "recovered", "shared", "restored", "edited_again",
                          "by_other_runs", "failed", "in_doubt")}
    facet = CutoutEditRunFacet(model=model, edits=counts["edited"], credits=int(summary.get("credits_spent") or 0),
                               counts=counts)
    return OperatorLineage(inputs=source_groups(sources), outputs=datasets([output_dir.rstrip("/")]),
                           run_facets={"cutout_edit": facet})
