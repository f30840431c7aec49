"""A local emulator of the Cutout.Pro Image Edit API, for demos and tests (needs Pillow).

Start it with ``cutout-sandbox --port 8080`` or ``python -m airflow_provider_cutout.sandbox``, or in
process with ``run_sandbox()``. Nothing in the provider imports this package.
"""

from airflow_provider_cutout.sandbox.server import SandboxServer, run_sandbox
from airflow_provider_cutout.sandbox.state import FAULT_KINDS, SandboxConfig

__all__ = ["FAULT_KINDS", "SandboxConfig", "SandboxServer", "run_sandbox"]
