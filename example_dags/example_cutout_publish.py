"""Publishing edited catalog images: this DAG is scheduled on the asset that
``example_cutout_catalog_refresh`` updates, reads what the refresh did from the asset event's extra,
and reads the stored files from the batch's manifest."""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, Asset, task

OUTPUT_DIR = os.environ.get("CUTOUT_EXAMPLE_OUTPUT", "/tmp/cutout-examples")
EDITED_CATALOG = Asset(name="cutout_edited_catalog", uri=f"file://{OUTPUT_DIR}/catalog")

with DAG(
    dag_id="example_cutout_publish",
    schedule=[EDITED_CATALOG],
    start_date=datetime.datetime(2026, 1, 1),
    params={"output_dir": OUTPUT_DIR},
    tags=["example", "cutout"],
) as dag:

    # [START howto_publish_on_asset]
    @task
    def publish(triggering_asset_events=None, params=None) -> dict:
        """Publish every stored image; a manual run (no asset event) reads the folder from params."""
        from airflow_provider_cutout.manifest import read_manifest

        events = list(triggering_asset_events[EDITED_CATALOG]) if triggering_asset_events else []
        extra = dict(events[-1].extra) if events else {}
        folder = extra.get("output_dir") or f"{params['output_dir']}/catalog"
        stored = sorted(e["stored_path"] for e in read_manifest(folder).values() if e["status"] == "stored")
        print(f"publishing {len(stored)} images from {folder}; the refresh edited {extra.get('edited', '?')} "
              f"for {extra.get('credits_spent', '?')} credits")
        return {"published": len(stored), "folder": folder}

    publish()
    # [END howto_publish_on_asset]
