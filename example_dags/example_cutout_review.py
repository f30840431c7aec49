"""A catalog refresh that a person reviews before anything is published: refresh -> review gate -> publish.

The refresh edits new or changed photos (as ``example_cutout_catalog_refresh``). The gate then waits in
Airflow's "Required actions" for a reviewer, who looks at the edits in the batch task's "Cutout review" view,
approves what is right, rejects what is wrong (with a corrected prompt, the next run edits that item again) and
chooses what to publish. The publish task copies only the results the answer lets through into ``published/``.
Without an answer within ``response_timeout`` the gate takes its default, "Publish approved only": nothing that
nobody approved is published. "Reject run" publishes nothing and fails the gate, so the run shows as failed.

A few failed products do not hold up the night's review: ``max_failures`` lets the refresh succeed when up to a
fifth of the items it edits fail (they cost nothing, are shown first in the view, and the next run tries them
again); more failures than that fail the refresh, and nothing is reviewed or published.

Its folder is fixed in the DAG file (``CUTOUT_EXAMPLE_OUTPUT`` at parse time), not a ``params`` value: whoever
may trigger the DAG may override params in run conf, and a reviewed folder belongs to its DAG (docs/review.md,
"Who may do what").

Run it under a scheduler, or with ``airflow dags test`` on Airflow 3.3 while an API server on the same metadata
DB is up (the gate waits for its answer there); Airflow 3.1's ``dags test`` cannot run a human-in-the-loop task.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.batch import CutoutBatchImageEditOperator
from airflow_provider_cutout.operators.review_gate import CutoutReviewGateOperator

CATALOG = Path(__file__).parent / "catalog" / "products.json"
OUTPUT_DIR = os.environ.get("CUTOUT_EXAMPLE_OUTPUT", "/tmp/cutout-examples")

with DAG(
    dag_id="example_cutout_review",
    schedule="@daily",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["example", "cutout"],
) as dag:

    @task
    def catalog_items() -> list[dict]:
        """The sample catalog, its image paths turned into URLs the API can fetch."""
        base = os.environ.get("CUTOUT_IMAGE_BASE_URL") or CutoutHook().base_url
        products = json.loads(CATALOG.read_text())["items"]
        return [{"key": p["key"], "prompt": p["prompt"], "image_urls": [f"{base.rstrip('/')}/{p['image']}"],
                 "aspect_ratio": p["aspect_ratio"]} for p in products]

    # [START howto_review_gate]
    items = catalog_items()
    refresh = CutoutBatchImageEditOperator(
        task_id="refresh_catalog",
        items=items,
        output_dir=f"{OUTPUT_DIR}/review/",  # fixed here: run conf cannot point the review at another folder
        max_credits=200,
        max_failures=0.2,  # a few failed products: the others are still reviewed and published tonight
    )
    gate = CutoutReviewGateOperator(
        task_id="review",
        batch_task_id="refresh_catalog",
        items=items,  # decide for the catalog's items (products that left it are not published)
        response_timeout=datetime.timedelta(hours=24),  # then "Publish approved only"
    )

    @task
    def publish(decision: dict) -> list[str]:
        """Copy the approved results, and only them, to where the shop reads them."""
        target = Path(OUTPUT_DIR) / "published"
        target.mkdir(parents=True, exist_ok=True)
        published = []
        for item in decision["approved"]:
            copy = target / Path(item["path"]).name
            shutil.copyfile(item["path"], copy)
            if hashlib.sha256(copy.read_bytes()).hexdigest() != item["sha256"]:
                copy.unlink()  # replaced since it was reviewed (a run that overlapped): not what was approved
                raise ValueError(f"{item['key']}: its stored file changed after the review; run the DAG again")
            published.append(item["key"])
        undecided = 0 if decision["decision"] == "Publish all but rejected" else len(decision["undecided"])
        print(f"{decision['decision']}: published {len(published)} into {target}, held back "
              f"{len(decision['rejected'])} rejected, {undecided} undecided, {len(decision['changed'])} edited again "
              "since the review, "
              f"{len(decision['unverified'])} with a decision that could not be trusted and "
              f"{len(decision['not_stored'])} without a result")
        return published

    refresh >> gate
    publish(gate.output)
    # [END howto_review_gate]
