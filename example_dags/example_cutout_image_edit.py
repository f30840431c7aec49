"""Edit product photos with Cutout.Pro: an upstream task produces image URLs, the operator edits them
(once for all of them together, and once per photo with ``.expand``), a downstream task reads the
result URL and the stored copy.

With the sandbox (``cutout-sandbox``), the photos are the sandbox's sample images. With the real
API, make ``product_photos`` return public https URLs of your own JPEG or PNG images.
"""

from __future__ import annotations

import datetime
import os

from airflow.sdk import DAG, XComArg, task

from airflow_provider_cutout.hooks.cutout import CutoutHook
from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator

OUTPUT_DIR = os.environ.get("CUTOUT_EXAMPLE_OUTPUT", "/tmp/cutout-examples")

with DAG(
    dag_id="example_cutout_image_edit",
    schedule=None,
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    params={"output_dir": OUTPUT_DIR},
    tags=["example", "cutout"],
) as dag:

    @task
    def product_photos() -> list[str]:
        """Image URLs from upstream; here, the sandbox's sample photos."""
        base = CutoutHook().base_url
        return [f"{base}/samples/{name}.jpg" for name in ("mug", "sneaker", "lamp")]

    photos = product_photos()

    # [START howto_operator_cutout_image_edit]
    lineup = CutoutImageEditOperator(
        task_id="lineup_on_white",
        prompt="Put the products side by side on a white background",
        image_urls=photos,
        model="qwen-image-edit-plus",
        aspect_ratio="16:9",
        output_path="{{ params.output_dir }}/lineup/",
    )
    # [END howto_operator_cutout_image_edit]

    # [START howto_operator_cutout_image_edit_mapped]
    cutouts = CutoutImageEditOperator.partial(
        task_id="cutout_each",
        prompt="Remove the background",
        model="gpt-image-1",
        aspect_ratio="1:1",
        output_path="{{ params.output_dir }}/cutouts/",
    ).expand(image_urls=photos)
    # [END howto_operator_cutout_image_edit_mapped]

    # [START howto_operator_cutout_image_edit_downstream]
    @task
    def publish(lineup_url: str, lineup_result: dict, cutout_urls: list[str]) -> dict:
        """Read the edited URL and the stored copy, as a publishing task would."""
        from airflow.sdk import ObjectStoragePath

        stored = ObjectStoragePath(lineup_result["stored_path"])
        return {
            "lineup_url": lineup_url,
            "lineup_file": str(stored),
            "lineup_bytes": stored.stat().st_size,
            "cutout_urls": list(cutout_urls),
        }

    publish(lineup.output, XComArg(lineup, key="cutout_result"), cutouts.output)
    # [END howto_operator_cutout_image_edit_downstream]
