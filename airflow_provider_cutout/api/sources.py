"""Source images, judged before any credit is spent: what one source's headers and first bytes said
(``SourceInfo``, read by ``api.inspection``) and the rules a model puts on it (``source_problems``). Pure:
no HTTP here, so the hook (imported when DAGs are parsed) does not load the HTTP stack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from airflow_provider_cutout.api.models import MODELS
from airflow_provider_cutout.exceptions import InvalidInputError
from airflow_provider_cutout.texts import first_of, shorten

SOURCE_FORMATS: tuple[str, ...] = ("jpeg", "png")  # what the API fetches, for every model
NOT_MODIFIED = 304  # the status of a source unchanged since its version was recorded
_FIX = ("fix the URL, or set check_sources=False if only Cutout.Pro can reach this source (nothing else "
        "about it is then checked before the edit is paid for)")


@dataclass(frozen=True)
class SourceInfo:
    """What one source image's first bytes and headers say, read before any credit is spent.

    :param url: the source as given.
    :param status: the HTTP status (0: no answer).
    :param format: ``jpeg``, ``png``, or what it looks like instead (``html``, ``unknown``).
    :param size: bytes, from ``Content-Range`` / ``Content-Length`` (``None``: not said).
    :param width: pixels, from the image header (``None``: not found in the bytes read).
    :param height: pixels, likewise.
    :param version: the content version: ``sha256:`` and the digest of the whole file, whatever its server's
        validators say (a version recorded by an older release is kept while its source is unchanged).
    :param validator: what asks the server cheaply whether it changed: the ETag, else Last-Modified and size,
        else ``""`` (read it again).
    :param legacy: the version releases before sources were hashed whole gave this answer (the ETag, else
        Last-Modified and size, else a hash of the first 128 KiB): what finds the edits they recorded.
    :param error: why no answer came (a timeout, a refused connection), else ``""``.
    :param unchanged: the source has not changed since ``version`` was recorded (a 304, or its listing said
        so): nothing else about it was read this time.
    """

    url: str
    status: int
    format: str = "unknown"
    size: int | None = None
    width: int | None = None
    height: int | None = None
    version: str = ""
    validator: str = ""
    error: str = ""
    unchanged: bool = False
    legacy: str = ""

    @property
    def versioned(self) -> bool:
        """Whether ``version`` is the source's content version now (read, or confirmed unchanged)."""
        return self.unchanged or 200 <= self.status < 300


class Recorded(NamedTuple):
    """What was recorded of a source when it was read before: its content ``version`` (in the fingerprint) and
    the ``validator`` that asks its server whether it changed (the ETag, or Last-Modified and size)."""

    version: str
    validator: str = ""

    @classmethod
    def of(cls, version: str, validator: str | None) -> Recorded:
        """From an entry; one written before validators were recorded holds its validator as its version."""
        if validator is None and not version.startswith("sha256:"):
            return cls(version, version)
        return cls(version, validator or "")


def sources_failed(problems: list[str]) -> InvalidInputError:
    """One error for every failing source check (the first 50), before anything was paid for."""
    checks = f"{len(problems)} source image check{'' if len(problems) == 1 else 's'} failed"
    return InvalidInputError(f"{checks} before anything was paid for; nothing was sent:\n  {first_of(problems)}")


def source_problems(info: SourceInfo, model: str, where: str) -> list[str]:
    """The rules a source breaks for ``model`` (reachable, JPEG or PNG, the model's limits), each naming the
    field, the value, the rule and the fix; empty when it passes."""
    shown = f"{where}={shorten(info.url)}"
    if info.error or not 200 <= info.status < 300:
        answer = info.error or f"answered HTTP {info.status}"
        return [f"{shown} could not be read ({answer}): the API fetches it itself and would fail; {_FIX}"]
    if info.format not in SOURCE_FORMATS:
        return [f"{shown} is not a JPEG or PNG image (it looks like {info.format}): the API accepts JPEG and PNG "
                f"sources only; point it at the image itself, or convert the image"]
    limits = MODELS[model].source_limits
    if limits is None:
        return []
    problems = []
    if info.size is not None and info.size > limits.max_bytes:
        problems.append(f"{shown} is {info.size:,} bytes; model={model!r} accepts at most {limits.max_bytes:,}: "
                        "compress or downscale it")
    if info.width is None or info.height is None:
        return [*problems, f"{shown}: its pixel size could not be read from its first bytes, and model={model!r} "
                           f"limits it; {_FIX}"]
    w, h = info.width, info.height
    size = f"{w}x{h}"
    if w * h < limits.min_pixels:
        problems.append(f"{shown} is {size} ({w * h:,} pixels); model={model!r} needs at least "
                        f"{limits.min_pixels:,} pixels (e.g. 1280x720): use a larger image")
    if max(w, h) > limits.max_side:
        problems.append(f"{shown} is {size}; model={model!r} accepts at most {limits.max_side} pixels per side: "
                        "downscale it")
    if min(w, h) <= limits.min_side_exclusive:
        problems.append(f"{shown} is {size}; model={model!r} needs both sides over {limits.min_side_exclusive} "
                        "pixels")
    if not limits.min_aspect <= w / h <= limits.max_aspect:
        problems.append(f"{shown} is {size} (aspect {w / h:.2f}); model={model!r} accepts aspect ratios from "
                        f"{limits.min_aspect:.2f} to {limits.max_aspect:g}: crop it")
    return problems
