"""The keys each chunk of a mapped run edits, so that one chunk can refuse a key another chunk of the same run
lists with another edit, before either pays (chunks made by hand can list a key twice; ``chunk_items`` refuses
that before mapping). Each chunk writes its keys and their fingerprints, then reads the others': of two chunks
that start at the same moment, at least the one that writes second sees the other (both may refuse, neither
pays twice). One small file per chunk, in ``_cutout/runs/<run>/`` (a new folder each time the run is cleared);
a chunk reads the others' whole: with N chunks, N x (N - 1) small reads per run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_cutout.state.io import STATE_DIR, list_files, write_whole


def run_folder(folder: Any, catalog: str, run: str, clear: int) -> Any:
    """Where the chunks of one run of one catalog list their keys, afresh each time the run is cleared (the
    catalog may have been chunked otherwise since)."""
    name = hashlib.sha256(f"{catalog}\n{run}\n{clear}".encode()).hexdigest()[:24]
    return folder / STATE_DIR / "runs" / name


def other_chunks(folder: Any, chunk: int, keys: Mapping[str, str]) -> dict[str, int]:
    """Write this chunk's ``keys`` (key -> fingerprint), then return the keys that another chunk of the run lists
    with another fingerprint, with that chunk's map index."""
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / f"{chunk}.json", json.dumps(keys, separators=(",", ":")).encode())
    found: dict[str, int] = {}
    for name in sorted(list_files(folder)):
        other = name.removesuffix(".json")
        if not other.isdigit() or int(other) == chunk:
            continue
        try:
            theirs = json.loads((folder / name).read_bytes())
        except (OSError, ValueError):  # a chunk being written, or a damaged file: its own check covers it
            continue
        for key, fingerprint in (theirs.items() if isinstance(theirs, dict) else ()):
            if key in keys and keys[key] != fingerprint:
                found.setdefault(key, int(other))
    return found
