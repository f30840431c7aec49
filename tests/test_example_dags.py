"""The example DAGs run end to end against the sandbox."""

from __future__ import annotations

from PIL import Image

from tests.conftest import states, xcoms
from tests.dags.examples import example_cutout_image_edit


def test_example_cutout_image_edit(sandbox, airflow_db, tmp_path):
    example_folder = tmp_path
    dr = example_cutout_image_edit.test(run_conf={"output_dir": str(example_folder)})
    assert all(state == "success" for runs in states(dr).values() for state, _ in runs), states(dr)
    published = xcoms(dr, "publish")[-1]
    assert published["lineup_url"].startswith(sandbox.url)
    img = Image.open(published["lineup_file"])
    assert abs(img.width / img.height - 16 / 9) < 0.02
    cutouts = sorted((example_folder / "cutouts").iterdir())
    assert len(cutouts) == 3 and all(Image.open(p).mode == "RGBA" for p in cutouts)
    assert sandbox.ledger()["credits_charged"] == 16
