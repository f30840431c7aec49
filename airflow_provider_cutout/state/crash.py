"""Named crash points for the tests that kill a run at a chosen step (the money-safety cases and the model of
the catalog). In production they do nothing: the process dies at a point only when ``CUTOUT_CRASH_AT`` names
it, which nothing but the tests sets."""

from __future__ import annotations

import os
import signal

#: The points a run passes (docs/architecture.md lists where each one is).
POINTS = ("edit_answered", "charged_recorded", "stored_file_renamed")
_ARMED = os.environ.get("CUTOUT_CRASH_AT", "")


def crash_point(name: str) -> None:
    """Kill this process at once (SIGKILL: no clean-up, as a lost worker) when ``CUTOUT_CRASH_AT`` names ``name``."""
    if _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
