"""The example DAGs run end to end against the sandbox."""

from __future__ import annotations

from PIL import Image

from tests.conftest import calls_and_charges, states, xcoms
from tests.dags.examples import example_cutout_image_edit


def test_example_cutout_image_edit(sandbox, airflow_db, tmp_path):
    example_folder = tmp_path
    dr = example_cutout_image_edit.test(run_conf={"output_dir": str(example_folder)})
    assert all(state == "success" for runs in states(dr).values() for state, _ in runs), states(dr)
    published = xcoms(dr, "publish")[-1]
    assert published["lineup_url"].startswith(sandbox.url)
    img = Image.open(published["lineup_file"])
    assert abs(img.width / img.height - 16 / 9) < 0.02
    cutouts = sorted((example_folder / "cutouts").glob("*.png"))
    assert len(cutouts) == 3 and all(Image.open(p).mode == "RGBA" for p in cutouts)
    assert sandbox.ledger()["credits_charged"] == 16


def test_example_catalog_refresh_second_run_edits_nothing(sandbox, airflow_db, tmp_path):
    from tests.dags.examples import example_cutout_catalog_refresh as dag

    first = dag.test(run_conf={"output_dir": str(tmp_path)})
    assert all(state == "success" for runs in states(first).values() for state, _ in runs), states(first)
    assert xcoms(first, "report")[-1] == {"stored": 12, "edited": 12, "skipped": 0}
    white = Image.open(tmp_path / "catalog" / "mug-white.png")
    assert white.width == white.height
    assert Image.open(tmp_path / "catalog" / "lamp-cutout.png").getpixel((0, 0))[3] == 0
    charged = sandbox.ledger()["charges"]
    assert charged == 12

    second = dag.test(run_conf={"output_dir": str(tmp_path)})
    assert xcoms(second, "report")[-1] == {"stored": 12, "edited": 0, "skipped": 12}
    assert sandbox.ledger()["charges"] == charged

    extras = [event.extra for event in asset_events("cutout_edited_catalog")[-2:]]  # one per successful run
    assert [(e["edited"], e["skipped"], e["failed"], e["credits_spent"]) for e in extras] == [
        (12, 0, 0, 48), (0, 12, 0, 0)]
    assert extras[-1]["output_dir"] == str(tmp_path / "catalog") and extras[-1]["manifest"].endswith("_cutout/manifest")

    from tests.dags.examples import example_cutout_publish as publish

    assert "cutout_edited_catalog" in repr(publish.timetable.asset_condition)  # scheduled on the asset
    published = xcoms(publish.test(run_conf={"output_dir": str(tmp_path)}), "publish")[-1]
    assert published == {"published": 12, "folder": f"{tmp_path}/catalog"}


def asset_events(name: str) -> list:
    """The asset events of an asset, oldest first, from the metadata DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).where(
            AssetModel.name == name).order_by(AssetEvent.id)
        events = list(session.scalars(query))
        session.expunge_all()
        return events


def test_demo_command_end_to_end(tmp_path):
    """``make demo`` without its install step: sandbox, Airflow CLI, two runs, ledger check."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["CUTOUT_DEMO_PYTHON"] = sys.executable
    out = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Connection success!" in out.stdout
    assert "12 edited images in" in out.stdout and "12 edits charged, 48 credits" in out.stdout


def test_example_chunked_catalog(sandbox, airflow_db, tmp_path):
    from airflow_provider_cutout.manifest import read_manifest
    from tests.dags.examples import example_cutout_catalog_chunked as dag

    dr = dag.test(run_conf={"output_dir": str(tmp_path)})
    summaries = xcoms(dr, "refresh_chunk")
    assert sorted(summaries) == [0, 1, 2] and sum(s["edited"] for s in summaries.values()) == 12
    folder = tmp_path / "catalog-chunked"
    log = sorted(p.name for p in (folder / "_cutout" / "manifest").iterdir())
    assert len(log) <= 2 and any("-snapshot-" in name for name in log)  # compacted as files grew beside it
    assert len(read_manifest(folder)) == 12
    again = xcoms(dag.test(run_conf={"output_dir": str(tmp_path)}), "refresh_chunk")
    assert sum(s["skipped"] for s in again.values()) == 12 and sandbox.ledger()["charges"] == 12


def test_example_minimal(sandbox, airflow_db, tmp_path):
    from tests.dags.examples import example_cutout_minimal as dag

    dr = dag.test(run_conf={"photo": sandbox.sample("mug", "jpg"), "output_dir": f"{tmp_path}/"})
    assert [s for s, _ in states(dr)["publish"]] == ["success"]
    result = xcoms(dr, "white_background", "cutout_result")[-1]
    image = Image.open(result["stored_path"])
    assert image.width == image.height and result["credits"] == 4
    assert calls_and_charges(sandbox) == [(1, 1)]  # one edit, sent once, paid once
