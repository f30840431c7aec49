"""The catalog refresh spread over workers: the catalog is split into chunks and the batch operator
is mapped over them, so Celery or Kubernetes executors run chunks in parallel. The chunks share one
output folder (put it on storage every worker reaches): each appends to its manifest log, claims keep
two chunks (or two overlapping runs) from paying for one item, and a re-run skips what any chunk
stored, even when the chunks are cut differently.

``max_active_runs=1`` keeps the schedule from overlapping itself; the claims still matter for a
manual run or a backfill beside it, and for other DAGs writing the same folder.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator, chunk_items

CATALOG = Path(__file__).parent / "catalog" / "products.json"
OUTPUT_DIR = os.environ.get("CUTOUT_EXAMPLE_OUTPUT", "/tmp/cutout-examples")

with DAG(
    dag_id="example_cutout_catalog_chunked",
    schedule="@daily",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"output_dir": OUTPUT_DIR},
    tags=["example", "cutout"],
) as dag:

    # [START howto_operator_cutout_batch_chunked]
    @task
    def catalog_chunks() -> list[list[dict]]:
        base = os.environ.get("CUTOUT_IMAGE_BASE_URL") or CutoutHook().base_url
        items = [
            {"key": p["key"], "prompt": p["prompt"], "image_urls": [f"{base}/{p['image']}"],
             "aspect_ratio": p["aspect_ratio"]}
            for p in json.loads(CATALOG.read_text())["items"]
        ]
        return chunk_items(items, size=5)

    CutoutBatchImageEditOperator.partial(
        task_id="refresh_chunk",
        output_dir="{{ params.output_dir }}/catalog-chunked/",
        max_concurrency=4,
        max_credits=100,  # per chunk
    ).expand(items=catalog_chunks())
    # [END howto_operator_cutout_batch_chunked]
