"""The smallest useful DAG: one photo in, the edited photo's URL out to a downstream task, and a
copy kept on disk (result URLs expire). The README quotes it."""

from __future__ import annotations

# [START minimal_dag]
from airflow.sdk import dag, task

from airflow_provider_cutout.operators.image_edit import CutoutImageEditOperator


@dag(schedule=None, params={"photo": "https://example.com/mug.jpg", "output_dir": "/tmp/cutout-examples/minimal/"})
def example_cutout_minimal():
    cutout = CutoutImageEditOperator(
        task_id="white_background",
        prompt="Put the product on a white background",
        image_urls="{{ params.photo }}",
        model="gpt-image-1",
        aspect_ratio="1:1",
        output_path="{{ params.output_dir }}",  # a folder (ends in /): s3://bucket/prefix/, gs://... work too
    )

    @task
    def publish(url: str) -> None:
        print("edited image:", url)

    publish(cutout.output)


example_cutout_minimal()
# [END minimal_dag]
