"""Files in an output folder, wherever Airflow's ``ObjectStoragePath`` reaches (local, s3, gcs, ...):
whole writes, listings, and stored results.

Result URLs from a CDN expire, so operators copy the image: streamed in chunks (bounded memory)
to a hidden temporary name beside the target, then renamed, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from airflow_provider_cutout.exceptions import CatalogStateError

#: The largest log file (of the manifest or the decisions) any reader reads: a snapshot of 500,000 records fits.
MAX_LOG_BYTES = 1 << 30
#: A log file with more records is not read at all: a snapshot of a catalog of 1,000,000 items fits.
MAX_RECORDS = 1_000_000
#: A log file with more lines that are no record is not read at all (a flood, not damage).
MAX_PROBLEMS = 10_000
#: The largest small state file (a claim, an owner, a folder's owner record, a decision).
MAX_RECORD_BYTES = 1 << 20
#: The folder, inside an output folder, that holds the provider's own state (manifest, claims, records).
STATE_DIR = "_cutout"
CHUNK_BYTES = 64 * 1024
#: Where claims and the manifest are kept safely (stores that refuse a second exclusive create), for messages.
SUPPORTED_STORES = ("a local or shared file system, S3 (s3://), GCS (gs://, gcsfs 2025.3 or newer) or Azure Blob "
                    "Storage / ADLS (abfs://, abfss://)")


def is_folder(output_path: Any) -> bool:
    """A path ending in ``/`` names a folder: files in it are named after the edit id."""
    return str(output_path).endswith("/")


def store_image(fetch: Callable[[IO[bytes]], str], output_path: Any, stem: str, *, tag: str | None = None) -> str:
    """Write an image to ``output_path`` atomically and return where it was written.

    :param fetch: streams the image into the file object it is given and returns its extension (``.png``),
        e.g. a download by the hook's client (the one place for HTTP).
    :param output_path: a file path, or a folder path ending in ``/``.
    :param stem: the file name without extension when ``output_path`` is a folder.
    :param tag: names the writer in the temporary file's name (``.<stem>.<tag>.part``), so the batch
        can tell leftovers of dead runs from files in progress; random by default.
    """
    from airflow.sdk import ObjectStoragePath

    target = ObjectStoragePath(str(output_path))
    folder = target if is_folder(output_path) else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{stem}.{tag or uuid.uuid4().hex}.part"
    try:
        with partial.open("wb") as sink:  # type: ignore[no-untyped-call]  # ObjectStoragePath.open is untyped
            extension = fetch(sink)
        final = folder / f"{stem}{extension}" if is_folder(output_path) else target
        partial.rename(final)
    except BaseException:
        if partial.exists():
            partial.unlink()
        raise
    return str(final)


class Digesting:
    """The SHA-256 of what is written through ``into(sink)``: recorded with each stored result, so a copy of
    that file made later can be checked to hold the same edit."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._sink: IO[bytes] | None = None

    def into(self, sink: IO[bytes]) -> Any:
        """A file object that writes to ``sink`` and digests what it writes."""
        self._sink = sink
        return self

    def write(self, data: bytes) -> int:
        """Write ``data`` through (the file-object side of ``into``)."""
        self._hash.update(data)
        assert self._sink is not None
        return self._sink.write(data)

    def hexdigest(self) -> str:
        """The digest of everything written so far."""
        return self._hash.hexdigest()


def copy_into(path: str, sink: IO[bytes]) -> str:
    """Stream the stored file ``path`` into ``sink`` (bounded memory); return its extension (``.png``)."""
    from airflow.sdk import ObjectStoragePath

    with ObjectStoragePath(path).open("rb") as source:  # type: ignore[no-untyped-call]
        shutil.copyfileobj(source, sink, CHUNK_BYTES)
    return "." + path.rsplit(".", 1)[-1]


def file_sha256(path: str) -> str:
    """The SHA-256 of the stored file ``path``, read in chunks."""
    from airflow.sdk import ObjectStoragePath

    digest = hashlib.sha256()
    with ObjectStoragePath(path).open("rb") as source:  # type: ignore[no-untyped-call]
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_file(path: Any, limit: int) -> bytes:
    """A state file's bytes, read so that what is in the folder cannot hang or flood the reader: a regular file
    only (locally opened without blocking and without following a link, so a FIFO, a device or a link to one is
    refused), of at most ``limit`` bytes. ``FileNotFoundError`` when it is not there; ``CatalogStateError``
    naming the file when it is no such file."""
    if not is_local(path):
        forget_listing(path)  # written by another run, maybe after this process listed its folder
        info = path.fs.info(path.path)
        if info.get("type") != "file" or int(info.get("size") or 0) > limit:
            raise _unsafe(path, limit)
        data = bytes(path.read_bytes())
    else:
        with _open_regular(path, limit) as source:
            data = source.read(limit + 1)
    if len(data) > limit:  # grew since
        raise _unsafe(path, limit)
    return data


def fresh_bytes(path: Any) -> bytes:
    """A file's bytes as the store has them now: on object stores one GET, which consults no listing. s3fs, gcsfs
    and adlfs answer a look-up from a listing they cached ("no such file" on S3 and GCS, "a folder" on Azure) for
    a file another run wrote after this process listed its folder: a live run's heartbeat or claim would look
    gone, and the run dead."""
    if is_local(path):
        return bytes(path.read_bytes())
    forget_listing(path)
    return bytes(path.fs.cat_file(path.path))


def forget_listing(path: Any) -> None:
    """Drop what this process cached of an object-store file and of its folder's listing (adlfs keeps the folder's
    listing when asked to forget the file; s3fs and gcsfs drop both)."""
    path.fs.invalidate_cache(path.path)
    path.fs.invalidate_cache(path.parent.path)


def _open_regular(path: Any, limit: int) -> IO[bytes]:
    """A local file, open: a regular file of at most ``limit`` bytes, opened without following a link and
    without blocking (a FIFO would)."""
    try:
        fd = os.open(path.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise _unsafe(path, limit) from None  # a link (ELOOP), or not readable
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        raise _unsafe(path, limit)
    return os.fdopen(fd, "rb")


def _unsafe(path: Any, limit: int) -> CatalogStateError:
    return CatalogStateError(f"{path} is not a regular file of at most {limit:,} bytes (a link, a FIFO, a device "
                             "or a folder where the provider keeps a file of its own): it is not read. Remove it.")


def is_local(path: Any) -> bool:
    """Whether ``path`` is on the local file system (where a write is not atomic by itself)."""
    return path.protocol in ("", "file", "local")


def write_whole(path: Any, data: bytes, *, exclusive: bool = False) -> None:
    """Write a file so that no reader ever sees half of it: on local disks a complete temporary file
    renamed into place, on object stores one PUT (atomic there).

    :param exclusive: create it only if it does not exist (``FileExistsError`` otherwise): locally a hard
        link of the temporary file (atomic and exclusive, NFS too), on object stores a conditional PUT. On GCS
        one upload with ``ifGenerationMatch=0`` (gcsfs' ``open("xb")`` starts a resumable upload, whose
        precondition gcsfs calls experimental and the emulator does not keep).
    """
    if exclusive and path.protocol in ("gs", "gcs"):
        path.fs.pipe_file(path.path, data, mode="create")
        return
    if not is_local(path):
        with path.open("xb" if exclusive else "wb") as sink:
            sink.write(data)
        return
    partial = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
    partial.write_bytes(data)
    if not exclusive:
        partial.rename(path)
        return
    try:
        os.link(partial.path, path.path)
    finally:
        partial.unlink()


def remove(path: Any) -> None:
    """Delete a file that another run may delete at the same moment (two runs tidying one folder): gone is what
    was wanted. ``unlink(missing_ok=True)`` looks, then deletes; gcsfs raises when the object went in between."""
    try:
        path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def list_names(folder: Any) -> set[str]:
    """The names of the files in ``folder`` (a local folder without a stat per file)."""
    if not is_local(folder):
        return set(list_files(folder))
    try:
        return set(os.listdir(folder.path))
    except FileNotFoundError:
        return set()


def file_exists(path: Any) -> bool:
    """Whether the file ``path`` is there now, as the store says (not a listing it cached). A lookup that fails
    for another reason than the file's absence raises (fsspec's ``exists`` takes any error for "missing"): a
    missing result would be fetched again, or paid for again."""
    if is_local(path):
        try:
            os.stat(path.path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True
    forget_listing(path)
    try:
        path.fs.info(path.path)
    except FileNotFoundError:
        return False
    return True


def existing(folder: Any, names: Iterable[str], concurrency: int) -> set[str]:
    """Which of these file names are in ``folder``. On object stores a few files of a large folder are looked up
    one by one (concurrently), not listed with all the others; a local folder is listed (cheap, and exact about
    names where the file system is not about case). A lookup that fails for another reason than the file's
    absence raises: "missing" would have the item restored, maybe paid again."""
    wanted = sorted(set(names))
    if is_local(folder) or not wanted:
        return set(wanted) & list_names(folder)
    folder.fs.invalidate_cache(folder.path)  # object stores cache listings: ask the store itself
    with ThreadPoolExecutor(max_workers=min(concurrency, len(wanted))) as pool:
        found = pool.map(lambda name: file_exists(folder / name), wanted)
        return {name for name, there in zip(wanted, found, strict=True) if there}


def json_lines(name: str, text: str, problem_of: Callable[[Any], str | None]) -> tuple[list[Any], list[str]]:
    """The records of a JSON Lines file, and where and why each line that is none is not (``problem_of`` says
    what is wrong with a parsed line, ``None`` when nothing is); blank lines are skipped."""
    records: list[Any] = []
    problems: list[str] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if len(problems) > MAX_PROBLEMS:  # a flood, not a damaged line or two
            raise CatalogStateError(f"{name} has over {MAX_PROBLEMS:,} lines that are no record: it is not read. "
                                    "Move it aside.")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            problems.append(f"{name} line {line_no}: not valid JSON ({err})")
            continue
        problem = problem_of(record)
        if problem is None:
            if len(records) >= MAX_RECORDS:
                raise CatalogStateError(f"{name} holds over {MAX_RECORDS:,} records: it is not read (a flood; the "
                                        "provider writes at most one record per item to a file)")
            records.append(record)
        else:
            problems.append(f"{name} line {line_no}: {problem}")
    return records, problems


def list_files(folder: Any) -> dict[str, int]:
    """File names in ``folder`` and their sizes, as the store has them now (object stores cache listings, and
    adlfs ignores ``refresh``)."""
    if not is_local(folder):
        folder.fs.invalidate_cache(folder.path)
    try:
        found = folder.fs.ls(folder.path, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {info["name"].rstrip("/").rsplit("/", 1)[-1]: int(info.get("size") or 0) for info in found}


def read_ranges(path: Any, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes ``[start, end)`` of each range of the file ``path``: one open and a seek per range on a local
    disk, concurrent ranged GETs on object stores (``fs.cat_ranges``)."""
    if not ranges:
        return []
    if not is_local(path):
        found = path.fs.cat_ranges([path.path] * len(ranges), [s for s, _ in ranges], [e for _, e in ranges],
                                   on_error="raise")
        for chunk in found:  # a store that hands errors back in the list all the same
            if isinstance(chunk, BaseException):
                raise chunk
        return list(found)
    found = []
    with _open_regular(path, MAX_LOG_BYTES) as source:
        for start, end in ranges:
            source.seek(start)
            found.append(source.read(end - start))
    return found
