"""``read_manifest`` at the import path downstream tasks already use (``airflow_provider_cutout.manifest``):
a re-export of ``state.manifest``, where the manifest log lives."""

from airflow_provider_cutout.state.manifest import EDITED, FAILED, IN_DOUBT, STORED, Manifest, read_manifest

__all__ = ["EDITED", "FAILED", "IN_DOUBT", "STORED", "Manifest", "read_manifest"]
