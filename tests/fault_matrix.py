"""The fault matrix: each scripted sandbox fault and what the hook, the operator and the batch
operator do about it (outcome, edit calls reaching the sandbox, credits charged).

The tests assert every cell against the sandbox's ledger, and ``docs/reliability.md`` holds the table
rendered from these rows (``python -m tests.fault_matrix`` rewrites it; a test checks it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
OK1, OK2, FAIL1 = "success (1 try)", "success after 1 Airflow retry", "failed, no Airflow retry"


@dataclass(frozen=True)
class Case:
    name: str
    faults: tuple[dict[str, Any], ...]
    hook: tuple[str, int, int]  # outcome, edit calls, credits
    operator: tuple[str, int, int]
    batch: tuple[str, int, int]
    extras: dict[str, Any] = field(default_factory=dict)  # connection extras
    result_ttl: float | None = None


CASES = [
    Case("429 with Retry-After (x2)", ({"kind": "rate_limit", "count": 2, "retry_after": 0.2},),
         ("success after 2 retries", 3, 4), (OK1, 3, 4), (OK1, 3, 4)),
    Case("429 without Retry-After (x2)", ({"kind": "rate_limit", "count": 2},),
         ("success after 2 retries", 3, 4), (OK1, 3, 4), (OK1, 3, 4)),
    # A 500, 502, 504 or 52x to an edit may come after the API did it and charged it: never resent by itself.
    Case("500", ({"kind": "http_error", "status": 500},),
         ("ServerError", 1, 0), (FAIL1, 1, 0), (FAIL1 + ", item in doubt", 1, 0)),
    Case("502", ({"kind": "http_error", "status": 502},),
         ("ServerError", 1, 0), (FAIL1, 1, 0), (FAIL1 + ", item in doubt", 1, 0)),
    Case("503 (x2)", ({"kind": "http_error", "status": 503, "count": 2},),
         ("success after 2 retries", 3, 4), (OK1, 3, 4), (OK1, 3, 4)),
    Case("504 after the edit was charged", ({"kind": "http_error", "status": 504, "after_edit": True},),
         ("ServerError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4)),
    Case("a CDN's 524 page after the edit was charged", ({"kind": "html_error", "status": 524, "after_edit": True},),
         ("ServerError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4)),
    Case("a proxy's bare 503 page (no envelope, no Retry-After)", ({"kind": "html_error", "status": 503},),
         ("ServerError", 1, 0), (FAIL1, 1, 0), (FAIL1 + ", item in doubt", 1, 0)),
    Case("503 for longer than the retries (x5)", ({"kind": "http_error", "status": 503, "count": 5},),
         ("ServerError after 4 attempts", 4, 0), (OK2, 6, 4), (OK2, 6, 4)),
    Case("HTML error page (502)", ({"kind": "html_error"},),
         ("ServerError", 1, 0), (FAIL1, 1, 0), (FAIL1 + ", item in doubt", 1, 0)),
    Case("dropped connection", ({"kind": "drop"},),
         ("CutoutConnectionError", 1, 0), (FAIL1, 1, 0), (FAIL1 + ", item in doubt", 1, 0)),
    Case("dropped connection after the edit", ({"kind": "drop", "after_edit": True},),
         ("CutoutConnectionError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4)),
    Case("read timeout (the edit completes)", ({"kind": "slow", "delay": 1.5},),
         ("CutoutTimeoutError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4),
         extras={"read_timeout": 0.5}),
    Case("malformed JSON", ({"kind": "malformed_json"},),
         ("ServerError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4)),
    Case("truncated body", ({"kind": "truncated_body"},),
         ("CutoutConnectionError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4)),
    Case("code 1001 insufficient balance", ({"kind": "insufficient_balance"},),
         ("InsufficientCreditsError", 1, 0), (FAIL1, 1, 0), (FAIL1 + ", batch stopped", 1, 0)),
    Case("unknown non-zero code", ({"kind": "unknown_code", "code": 4242},),
         ("CutoutAPIError", 1, 0), (FAIL1, 1, 0), (OK2, 2, 4)),
    Case("status 0 with failReason", ({"kind": "failed_edit", "fail_reason": "Face not found"},),
         ("FailedEditError", 1, 0), (FAIL1, 1, 0), (OK2, 2, 4)),
    Case("expired result URL when storing", (),
         ("ResultDownloadError", 1, 4), (FAIL1, 1, 4), (FAIL1 + ", item in doubt", 1, 4), result_ttl=0.0),
]


def table() -> str:
    lines = [
        "| case | hook: outcome | calls | credits | operator: outcome | calls | credits | batch: outcome | calls "
        "| credits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in CASES:
        cells = [c.name, *map(str, c.hook), *map(str, c.operator), *map(str, c.batch)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


BLOCK = re.compile(r"(<!-- fault-matrix -->\n)(.*?)(<!-- /fault-matrix -->)", re.S)


def render(doc: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table() + m.group(3), doc)


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
