"""The keys each chunk of a mapped run edits, so that one chunk can refuse a key another chunk of the same run
lists with another edit, before either pays (chunks made by hand can list a key twice; ``chunk_items`` refuses
that before mapping). Each chunk writes its keys and their fingerprints, then reads the others': of two chunks
that start at the same moment, at least the one that writes second sees the other (both may refuse, neither
pays twice).

One small file per chunk and clear of the run, ``_cutout/runs/<run>/<map_index>.<clear>.json``; a chunk
compares its keys with each other chunk's newest list. A chunk cleared alone (Airflow counts every clear of a
run) still sees the lists of the chunks that were not; a run cleared and chunked otherwise may refuse a key
until the chunk that listed it before has run again (a retry passes then). N chunks make N x (N - 1) small reads
per run."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_cutout.state.io import STATE_DIR, fresh_bytes, list_files, write_whole

_NAME = re.compile(r"(\d+)\.(\d+)\.json")


def run_folder(folder: Any, catalog: str, run: str) -> Any:
    """Where the chunks of one run of one catalog list their keys."""
    return folder / STATE_DIR / "runs" / hashlib.sha256(f"{catalog}\n{run}".encode()).hexdigest()[:24]


def other_chunks(folder: Any, chunk: int, clear: int, keys: Mapping[str, str]) -> dict[str, int]:
    """Write this chunk's ``keys`` (key -> fingerprint) for this ``clear`` of the run, then return the keys that
    another chunk's newest list gives another fingerprint, with that chunk's map index."""
    folder.mkdir(parents=True, exist_ok=True)
    write_whole(folder / f"{chunk}.{clear}.json", json.dumps(keys, separators=(",", ":")).encode())
    newest: dict[int, tuple[int, str]] = {}  # map index -> (clear, file name)
    for name in list_files(folder):
        match = _NAME.fullmatch(name)
        if match and int(match[1]) != chunk and int(match[2]) >= newest.get(int(match[1]), (-1, ""))[0]:
            newest[int(match[1])] = (int(match[2]), name)
    found: dict[str, int] = {}
    for other, (_, name) in sorted(newest.items()):
        for key, fingerprint in _listed(folder / name).items():
            if key in keys and keys[key] != fingerprint:
                found.setdefault(key, other)
    return found


def listed_elsewhere(folder: Any, chunk: int, key: str, fingerprint: str) -> bool:
    """Whether a chunk of that run other than ``chunk`` listed ``key`` with ``fingerprint`` (read only): the run's
    catalog listed the key twice, with two edits."""
    for name in list_files(folder):
        match = _NAME.fullmatch(name)
        if match and int(match[1]) != chunk and _listed(folder / name).get(key) == fingerprint:
            return True
    return False


def _listed(path: Any) -> dict[str, Any]:
    """One chunk's keys and fingerprints (none when it is being written, or damaged: its own check covers it)."""
    try:
        theirs = json.loads(fresh_bytes(path))
    except (OSError, ValueError):
        return {}
    return theirs if isinstance(theirs, dict) else {}
