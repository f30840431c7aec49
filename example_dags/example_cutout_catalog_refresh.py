"""A daily catalog refresh: every product photo of a catalog edited in one task, with bounded
concurrency and a budget. A re-run edits (and pays for) only new or changed items.

The sample catalog (``catalog/products.json``) names images relative to ``CUTOUT_IMAGE_BASE_URL``,
by default the connection's base URL: the sandbox serves those samples. With the real API, point
``CUTOUT_IMAGE_BASE_URL`` at the https location of your own photos.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from airflow.sdk import DAG, Asset, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator

CATALOG = Path(__file__).parent / "catalog" / "products.json"
OUTPUT_DIR = os.environ.get("CUTOUT_EXAMPLE_OUTPUT", "/tmp/cutout-examples")
#: The edited catalog as an Airflow asset: example_cutout_publish runs whenever a refresh succeeds.
EDITED_CATALOG = Asset(name="cutout_edited_catalog", uri=f"file://{OUTPUT_DIR}/catalog")

with DAG(
    dag_id="example_cutout_catalog_refresh",
    schedule="@daily",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={"output_dir": OUTPUT_DIR},
    tags=["example", "cutout"],
) as dag:

    # [START howto_catalog_items]
    @task
    def catalog_items() -> list[dict]:
        """Read the catalog and turn image paths into URLs the API can fetch."""
        base = os.environ.get("CUTOUT_IMAGE_BASE_URL") or CutoutHook().base_url
        products = json.loads(CATALOG.read_text())["items"]
        return [
            {
                "key": p["key"],
                "prompt": p["prompt"],
                "image_urls": [f"{base.rstrip('/')}/{p['image']}"],
                "aspect_ratio": p["aspect_ratio"],
            }
            for p in products
        ]
    # [END howto_catalog_items]

    # [START howto_operator_cutout_batch]
    refresh = CutoutBatchImageEditOperator(
        task_id="refresh_catalog",
        items=catalog_items(),
        output_dir="{{ params.output_dir }}/catalog/",
        model="gpt-image-1",
        max_concurrency=8,
        max_credits=200,
        max_failures=0.05,  # a few bad photos (1 in 20) fail alone; the rest of the catalog is still refreshed
        outlets=[EDITED_CATALOG],  # its event's extra: edited, skipped, failed, credits, manifest, folder
    )
    # [END howto_operator_cutout_batch]

    # [START howto_read_manifest]
    @task
    def report(summary: dict) -> dict:
        """What a publishing task would read: the stored file of every item."""
        from airflow_provider_cutout.manifest import read_manifest

        entries = read_manifest(summary["output_dir"])
        stored = {key: e["stored_path"] for key, e in entries.items() if e["status"] == "stored"}
        print(f"{len(stored)} images in {summary['output_dir']}; manifest {summary['manifest']}")
        print(f"this run: {summary['edited']} edited, {summary['skipped']} skipped, "
              f"{summary['credits_spent']} credits spent")
        return {"stored": len(stored), "edited": summary["edited"], "skipped": summary["skipped"]}

    report(refresh.output)
    # [END howto_read_manifest]
