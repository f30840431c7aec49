"""The review gallery: one self-contained HTML page per output folder, each item's source and result side by
side, the items that need a look (failed, in doubt, paid for but not stored) first.

The page holds no script and loads no style or font from anywhere: results are referenced relative to the
page (the folder can be copied or served as it is), sources by their own URLs.
"""

from __future__ import annotations

import hashlib
import html
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_cutout.api.urls import is_object_store_uri
from airflow_provider_cutout.state.decisions import APPROVED, REJECTED
from airflow_provider_cutout.state.io import is_local, write_whole
from airflow_provider_cutout.state.manifest import EDITED, FAILED, IN_DOUBT, STORED, newest
from airflow_provider_cutout.texts import number

GALLERY_NAME = "cutout-gallery.html"
DEFAULT_LIMIT = 2000
_ORDER = {FAILED: 0, IN_DOUBT: 1, EDITED: 2, STORED: 3}
LABELS = {FAILED: "failed", IN_DOUBT: "in doubt", EDITED: "paid, not stored", STORED: "stored"}
CREDITS_NOTE = ("Credits recorded count each item's newest edit; an item edited again (a new photo or prompt) "
                "was charged for its earlier edits too, so the account may show more.")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2733;background:#f6f8fa}
h1{font-size:20px;margin:0 0 8px;overflow-wrap:anywhere}.counts span{margin-right:18px}.note{color:#5b6875}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,540px),1fr));gap:12px}
.item{display:flex;flex-wrap:wrap;gap:8px 12px;background:#fff;border:1px solid #d5dbe1;border-radius:6px;padding:10px;
min-width:0;scroll-margin-top:120px}
.item.failed,.item.in_doubt{border-color:#d1242f}.item.edited{border-color:#bf8700}
.item:target{outline:3px solid #0969da;outline-offset:2px}
h2.key{flex:1 1 100%;font-size:15px;margin:0;overflow-wrap:anywhere}
.pics{display:flex;flex-wrap:wrap;gap:12px;flex:1 1 100%}
figure{margin:0;flex:1 1 240px;min-width:240px;max-width:360px;text-align:center}
figcaption{color:#5b6875;font-size:12px;overflow-wrap:anywhere}
figure a{display:block}
img,.none{display:block;width:100%;aspect-ratio:1/1;height:auto;object-fit:contain;
background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px}
.none{display:flex;align-items:center;justify-content:center;background:#f0f2f4;color:#5b6875;font-size:12px;
text-align:center;padding:8px;box-sizing:border-box;overflow-wrap:anywhere}
img.source{position:relative}img.source::after{content:attr(data-missing);position:absolute;inset:0;display:flex;
align-items:center;justify-content:center;background:#f0f2f4;color:#5b6875;font-size:12px;text-align:center}
dl{margin:0;display:grid;grid-template-columns:auto 1fr;gap:2px 8px;align-content:start;min-width:0;flex:1 1 100%}
dt{color:#5b6875}dd{margin:0;overflow-wrap:break-word;min-width:0}
details{flex:1 1 100%;color:#5b6875;font-size:12px}details dl{margin-top:4px}
.status{font-weight:600}.failed .status,.in_doubt .status{color:#d1242f}.edited .status{color:#bf8700}
.error{color:#d1242f;white-space:pre-wrap}
.item[data-review=rejected]{border-color:#d1242f;border-width:2px}.item[data-review=approved]{border-color:#1a7f37}
dd.rejected{color:#d1242f;font-weight:600}dd.approved{color:#1a7f37;font-weight:600}
"""
# Only inline style and images: the page can run no script, whatever a prompt or an error text holds.
_CSP = "default-src 'none'; img-src * data: blob: file:; style-src 'unsafe-inline'"


def gallery_items(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest entry of each item key: those that need a look first, then the stored; by key within each."""
    return sorted(map(_sane, newest(entries, order=lambda e: number(e.get("updated_at"))).values()),
                  key=lambda e: (_ORDER.get(e.get("status", ""), 0), str(e.get("key"))))


def render_gallery(entries: Iterable[dict[str, Any]], *, title: str, run: dict[str, Any] | None = None,
                   result_src: Callable[[str], str] | None = None,
                   source_src: Callable[[str], str | None] | None = None, limit: int = DEFAULT_LIMIT) -> str:
    """The gallery page for manifest entries.

    :param title: the heading (the output folder).
    :param run: this run's summary, shown above the catalog's counts.
    :param result_src: a function from a stored file's name to the URL the page shows it by (the name
        itself, relative to the page, by default).
    :param source_src: a function from a source's URL to the URL the page shows it by, ``None`` for none
        (the source's own URL by default).
    :param limit: the most items shown; every item that needs a look is shown, the stored ones beyond
        the limit are counted, not shown.
    """
    items = gallery_items(entries)
    counts = dict.fromkeys(_ORDER, 0)
    for entry in items:
        counts[entry.get("status", FAILED)] = counts.get(entry.get("status", FAILED), 0) + 1
    shown = items[: max(limit, len(items) - counts[STORED])]
    top = "".join(f"<span>{LABELS[s]}: <b>{counts[s]}</b></span>" for s in _ORDER)
    top += "".join(f"<span>{name}: <b>{sum(review_of(e).get('decision') == name for e in items)}</b></span>"
                   for name in (APPROVED, REJECTED))
    top += f"<span>credits recorded: <b>{credits_recorded(items)}</b></span>"
    this_run = "" if run is None else (
        f"<p class='note'>This run: {run.get('edited', 0)} edited, {run.get('skipped', 0)} skipped, "
        f"{run.get('failed', 0)} failed, {run.get('in_doubt', 0)} in doubt, {run.get('credits_spent', 0)} credits"
        + (f"; the account's rate limit answered 429 to {run['rate_limited']} edits, and the run settled at "
           f"{run['rate']} edits a second" if run.get("rate_limited") and run.get("rate") else "") + ".</p>")
    left_out = len(items) - len(shown)
    more = f"<p class='note'>{left_out} more stored items are in the manifest, not shown.</p>" if left_out else ""
    cards = "\n".join(card(entry, result_src or (lambda name: name), source_src or (lambda url: url))
                      for entry in shown)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        f"<title>Cutout gallery: {escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Cutout gallery: {escape(title)}</h1><p class='counts'>{top}</p>{this_run}"
        f"<p class='note'>Generated {generated} from the manifest; items that need a look come first. "
        f"{CREDITS_NOTE}</p>{more}"
        f"<main>\n{cards}\n</main></body></html>\n"
    )


def _sane(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry, or a copy with a damaged status (not text) shown as failed and damaged sources (not a list)
    as none: one bad line of a manifest does not fail a page."""
    status, sources = entry.get("status", FAILED), entry.get("image_urls") or []
    if isinstance(status, str) and isinstance(sources, list | tuple):
        return entry
    return {**entry, "status": status if isinstance(status, str) else FAILED,
            "image_urls": sources if isinstance(sources, list | tuple) else []}


def credits_recorded(items: Iterable[dict[str, Any]]) -> int:
    """The credits the newest entries of these items record (failed edits cost nothing)."""
    return sum(int(number(e.get("credits"))) for e in items if e.get("status") != FAILED)


def card(entry: dict[str, Any], result_src: Callable[[str], str], source_src: Callable[[str], str | None],
         no_source: str = "source on object storage", footer: str = "", recorded: str = "") -> str:
    """One item's card: its source and result side by side (before and after), each a link to the image at full
    size, and what the manifest says of it, technical fields folded away. Every value is escaped (keys, prompts and
    error texts come from the catalog and the API).

    :param no_source: what stands where the source is not shown (``source_src`` gave ``None``), before its host.
    :param footer: HTML closing the card (the review view's decision form).
    :param recorded: HTML at the top of the card (what the review view just recorded on it).
    """
    status = entry.get("status", FAILED)
    sources = [str(url) for url in entry.get("image_urls") or []]
    host = escape(_host(sources[0])) if sources else ""
    shown = source_src(sources[0]) if sources else None
    key = escape(entry.get("key"))
    source = (_linked(shown, f"<img class='source' src='{escape(shown)}' alt='source of {key}' loading='lazy' "
                             f"data-missing='source not reachable: {host}'>") if shown
              else f"<div class='none'>{f'{escape(no_source)}: {host}' if sources else 'no source'}</div>")
    stored = str(entry.get("stored_path") or "").rsplit("/", 1)[-1]
    result = (_linked(result_src(stored), f"<img class='result' src='{escape(result_src(stored))}' "
                                          f"alt='result of {key}' loading='lazy'>")
              if status == STORED and stored else "<div class='none'>no result</div>")
    extra = f" (+{len(sources) - 1} more)" if len(sources) > 1 else ""
    rows = [("key", entry.get("key")), ("prompt", entry.get("prompt")), ("credits", entry.get("credits") or 0)]
    technical = [("model", entry.get("model")), ("ratio", entry.get("aspect_ratio")),
                 ("request id", entry.get("request_id")), ("fingerprint", entry.get("fingerprint")),
                 ("sha256", entry.get("sha256"))]
    error = f"<dt>error</dt><dd class='error'>{escape(entry['error'])}</dd>" if entry.get("error") else ""
    decided = review_of(entry)
    return (
        f"<section class='item {escape(status)}' id='{item_anchor(entry.get('key'))}' data-key='{key}' "
        f"data-status='{escape(status)}' data-review='{escape(decided.get('decision', ''))}'>{recorded}"
        f"<h2 class='key'>{key}</h2>"
        f"<div class='pics'><figure>{source}<figcaption>before: {host or 'source'}{extra}{_zoom(shown)}"
        f"</figcaption></figure><figure>{result}<figcaption>after: the edit{_zoom(status == STORED and stored)}"
        "</figcaption></figure></div>"
        f"<dl><dt>status</dt><dd class='status'>{LABELS.get(status, escape(status))}</dd>{_rows(rows)}{error}"
        f"{_review_rows(decided)}</dl><details><summary>technical details</summary><dl>{_rows(technical)}</dl>"
        f"</details>{footer}</section>"
    )


def _rows(rows: list[tuple[str, Any]]) -> str:
    return "".join(f"<dt>{name}</dt><dd>{escape(value)}</dd>" for name, value in rows if value not in (None, ""))


def _zoom(linked: Any) -> str:
    return " (click for full size)" if linked else ""


def _linked(href: str, image: str) -> str:
    """An image that opens at full size in a new tab (no script: a plain link)."""
    return f"<a href='{escape(href)}' target='_blank' rel='noopener noreferrer' title='open at full size'>{image}</a>"


def item_anchor(key: Any) -> str:
    """The id of an item's card, safe in a URL's fragment whatever the key holds."""
    return "item-" + hashlib.sha256(str(key).encode()).hexdigest()[:16]


def _host(url: str) -> str:
    """Where a source is, for its placeholder (a URL's host; never its query, which may be a signature)."""
    return urlsplit(url).netloc.rpartition("@")[2] or url.split("?", 1)[0][:80]


def review_of(entry: dict[str, Any]) -> dict[str, Any]:
    """The decision that stands for an entry's edit (``read_manifest``'s ``review``), ``{}`` when none (or damaged)."""
    review = entry.get("review")
    return review if isinstance(review, dict) and review.get("decision") in (APPROVED, REJECTED) else {}


def _review_rows(review: dict[str, Any]) -> str:
    if not review:
        return ""
    when = number(review.get("at"))
    stamp = time.strftime(" on %Y-%m-%d %H:%M UTC", time.gmtime(when)) if when else ""
    rows = f"<dt>review</dt><dd class='{escape(review['decision'])}'>{escape(review['decision'])} by " \
           f"{escape(review.get('by') or 'someone')}{stamp}</dd>"
    if review.get("note"):
        rows += f"<dt>note</dt><dd>{escape(review['note'])}</dd>"
    if isinstance(review.get("prompt"), str):
        rows += f"<dt>corrected prompt</dt><dd>{escape(review['prompt'])}</dd>"
    return rows


def escape(value: Any) -> str:
    """``value`` as HTML text, quotes included (safe in an attribute)."""
    return html.escape(str(value), quote=True)


def gallery_name(chunk: int | None = None) -> str:
    """The gallery's file name: ``cutout-gallery.html`` for the folder, ``cutout-gallery-<map index>.html`` for one
    chunk of a mapped task."""
    return GALLERY_NAME if chunk is None else GALLERY_NAME.replace(".html", f"-{chunk}.html")


def write_gallery(folder: Any, entries: Iterable[dict[str, Any]], *, run: dict[str, Any] | None = None,
                  link_expiry: int | None = None, limit: int = DEFAULT_LIMIT, chunk: int | None = None) -> Any:
    """Write the gallery into ``folder`` whole, from these manifest entries; return its path.

    :param link_expiry: on object storage, link results (and object-store sources) by signed URLs valid this
        many seconds (a browser cannot read ``s3://``); ``None`` links results relative to the page (copy or
        serve the folder) and shows no thumbnail for object-store sources.
    :param chunk: the map index of a mapped task, whose entries are its chunk's (``gallery_name``).
    """
    from airflow.sdk import ObjectStoragePath

    def signed(name: str) -> str:
        return str((folder / name).sign(expiration=link_expiry))

    def source(url: str) -> str | None:  # a browser cannot read s3://: signed when links are, else none
        if not is_object_store_uri(url):
            return url
        return str(ObjectStoragePath(url).sign(expiration=link_expiry)) if link_expiry is not None else None

    result_src = signed if link_expiry is not None and not is_local(folder) else None
    page = folder / gallery_name(chunk)
    title = str(folder) if chunk is None else f"{folder} (chunk {chunk})"
    write_whole(page, render_gallery(entries, title=title, run=run, result_src=result_src, source_src=source,
                                     limit=limit).encode("utf-8"))
    return page
