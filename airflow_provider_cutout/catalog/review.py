"""The review view's page (served inside Airflow by ``plugins.review``): a catalog's items from its manifest,
filtered by status and key, counted, with the credits they record, one page at a time as a grid of cards.

Pure: the items in, the page out. It holds no script; filters, search, pages and the way back to a decided card
are links, anchors and forms, so the view works under a Content-Security-Policy that allows no script at all.
Results are shown through ``image_url``; a source through ``source_url`` (the reviewer's browser loads a public
``https://`` photo itself; the view's server fetches no source).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from airflow_provider_cutout.catalog.gallery import (
    CREDITS_NOTE,
    LABELS,
    STYLE,
    card,
    credits_recorded,
    escape,
    item_anchor,
    review_of,
)
from airflow_provider_cutout.state.decisions import APPROVED, REJECTED
from airflow_provider_cutout.state.manifest import EDITED, FAILED, IN_DOUBT, STORED
from airflow_provider_cutout.texts import number

PER_PAGE = 60
#: The filters of the view: a name in the query string, its label, and which items it keeps.
FILTERS: dict[str, tuple[str, Callable[[dict[str, Any], float], bool]]] = {
    "all": ("all", lambda e, since: True),
    "failed": (LABELS[FAILED], lambda e, since: e.get("status") == FAILED),
    "in_doubt": (LABELS[IN_DOUBT], lambda e, since: e.get("status") == IN_DOUBT),
    "not_stored": (LABELS[EDITED], lambda e, since: e.get("status") == EDITED),
    "stored": (LABELS[STORED], lambda e, since: e.get("status") == STORED),
    "this_run": ("changed since this task started",
                 lambda e, since: bool(since) and number(e.get("updated_at")) >= since),
    "to_review": ("stored, not decided", lambda e, since: e.get("status") == STORED and not review_of(e)),
    "approved": (APPROVED, lambda e, since: review_of(e).get("decision") == APPROVED),
    "rejected": (REJECTED, lambda e, since: review_of(e).get("decision") == REJECTED),
}
#: Only style; no script; images from the view itself and public https sources; a frame of Airflow's pages only.
CSP = ("default-src 'none'; img-src 'self' https:; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'self'")
#: ``CSP`` for a view served on loopback (a developer's machine), whose sandbox serves sources over plain http.
CSP_LOOPBACK = CSP.replace("img-src 'self' https:", "img-src 'self' https: http://127.0.0.1:* http://localhost:*")
_EXTRA_STYLE = """
html{scroll-padding-top:150px}body{margin:0 16px 16px}
header{position:sticky;top:0;z-index:1;background:#f6f8fa;padding:8px 0 4px;border-bottom:1px solid #d5dbe1;
margin-bottom:10px}
h1{font-size:16px;margin:0 0 4px}h1 a{font-size:13px;font-weight:400;margin-left:10px}
.counts{margin:0 0 4px}nav{margin:0}nav a{margin-right:12px}nav a.on{font-weight:700;color:#1d2733;text-decoration:none}
form{display:inline-block;margin-left:12px}input[type=search]{width:220px}
.recorded{background:#dafbe1;border:1px solid #1a7f37;border-radius:4px;padding:4px 8px;margin:6px 0 0}
.item .recorded{flex:1 1 100%;margin:0}
.pages{margin:10px 0}.pages a,.pages span{margin-right:14px}
form.decide{display:flex;flex:1 1 100%;flex-wrap:wrap;gap:6px;margin:6px 0 0;align-items:center}
form.decide input[type=text]{flex:1 1 160px}form.decide textarea{flex:1 1 100%;height:38px;font:inherit}
form.decide button{padding:4px 14px}
"""


def _nav(query: ReviewQuery, href: Callable[..., str], hidden: dict[str, str], counts: dict[str, int]) -> str:
    """The filters with their counts, and the key search (which keeps the task instance's parameters)."""
    filters = "".join(
        f"<a href='{escape(href(status=name, page=1))}'{' class=on' if name == query.status else ''}>"
        f"{escape(label)}: {counts[name]:,}</a>" for name, (label, _) in FILTERS.items())
    fields = "".join(f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>" for k, v in hidden.items())
    return (filters + f"<form method='get' action=''>{fields}<input type='hidden' name='status' "
            f"value='{escape(query.status)}'><input type='search' name='q' value='{escape(query.search)}' "
            "placeholder='item key contains'><button>Search</button></form>")


@dataclass(frozen=True)
class ReviewQuery:
    """What the reviewer asked for: a filter of ``FILTERS``, a search in item keys, and a page (from 1)."""

    status: str = "all"
    search: str = ""
    page: int = 1

    @classmethod
    def parse(cls, status: str | None, search: str | None, page: str | None) -> ReviewQuery:
        """From the query string, forgiving: an unknown filter is ``all``, a page that is not a number the first."""
        chosen = int(page) if page and page.isascii() and page.isdigit() and len(page) < 10 else 1
        return cls(status if status in FILTERS else "all", (search or "").strip()[:200], max(1, chosen))


def select(items: Sequence[dict[str, Any]], query: ReviewQuery, since: float = 0.0,
           also: str | None = None) -> list[dict[str, Any]]:
    """The items the query keeps, in their order (those that need a look first); and the item whose key reads
    ``also`` wherever it stands (a card just decided stays in its place, though the filter no longer keeps it)."""
    keep = FILTERS[query.status][1]
    needle = query.search.casefold()
    return [e for e in items if (keep(e, since) and (not needle or needle in str(e.get("key", "")).casefold()))
            or (also is not None and str(e.get("key")) == also)]


def count(items: Sequence[dict[str, Any]], since: float = 0.0) -> dict[str, int]:
    """How many items each filter keeps."""
    return {name: len(select(items, ReviewQuery(name), since)) for name in FILTERS}


def render_review(items: Sequence[dict[str, Any]], *, query: ReviewQuery, title: str, href: Callable[..., str],
                  image_url: Callable[[str], str], hidden: dict[str, str], since: float = 0.0,
                  per_page: int = PER_PAGE, decide: Decide | None = None, counts: dict[str, int] | None = None,
                  source_url: Callable[[str], str | None] = lambda url: None, recorded: str | None = None,
                  full_page: str | None = None) -> str:
    """The view's page.

    :param items: the newest entry of each item key, those that need a look first (``gallery.gallery_items``).
    :param title: the heading (the output folder).
    :param href: the view's URL with these query parameters changed (``status``, ``q``, ``page``).
    :param image_url: the URL a stored file's name is shown by.
    :param hidden: the query parameters that name the task instance, carried by the search form.
    :param since: when the task instance started (the ``this_run`` filter); ``0``: unknown.
    :param decide: where a stored item's decision form posts to, and its token; ``None``: no forms (a reader
        who may not decide).
    :param counts: ``count(items, since)``, when the caller keeps it.
    :param source_url: the URL the browser loads a source by (``None``: not shown, its host named).
    :param recorded: the key (as text) of the item a decision was just recorded on: its card stays in its place
        and says what was recorded, with a link to the next item to review.
    :param full_page: a link that opens this page outside Airflow's frame.
    """
    counts = counts if counts is not None else count(items, since)
    chosen = select(items, query, since, also=recorded)
    pages = max(1, -(-len(chosen) // per_page))
    page = min(query.page, pages)
    shown = chosen[(page - 1) * per_page: page * per_page]
    back = {"status": query.status, "q": query.search, "page": str(page)}
    done = next((e for e in shown if str(e.get("key")) == recorded), None)
    banner = _recorded(done, shown, href) if done is not None else ""
    cards = "\n".join(card(e, image_url, source_url, no_source="source not shown here",
                           footer=decide.form(e, back) if decide is not None and e.get("status") == STORED else "",
                           recorded=banner if e is done else "")
                      for e in shown)
    empty = "" if shown else "<p class='note'>No item matches.</p>"
    opener = (f"<a href='{escape(full_page)}' target='_blank' rel='noopener'>open full page</a>"
              if full_page else "")
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>Cutout review</title>"
        f"<style>{STYLE}{_EXTRA_STYLE}</style></head><body><header>"
        f"<h1>Cutout review: {escape(title)}{opener}</h1>"
        f"<p class='counts'><span>items: <b>{len(items):,}</b></span>"
        f"<span>to review: <b>{counts['to_review']:,}</b></span>"
        f"<span>approved: <b>{counts['approved']:,}</b></span><span>rejected: <b>{counts['rejected']:,}</b></span>"
        f"<span>failed: <b>{counts['failed']:,}</b></span>"
        f"<span title='{escape(CREDITS_NOTE)}'>credits recorded: <b>{credits_recorded(items):,}</b></span></p>"
        f"<nav>{_nav(query, href, hidden, counts)}</nav>{banner}</header>{_pages(href, page, pages, len(chosen))}"
        f"<main>\n{cards}\n</main>{empty}{_pages(href, page, pages, len(chosen))}"
        f"<p class='note'>{CREDITS_NOTE}</p></body></html>\n"
    )


def _recorded(done: dict[str, Any], shown: Sequence[dict[str, Any]], href: Callable[..., str]) -> str:
    """What was just recorded on ``done`` (as its manifest now says), and the next item to review on this page,
    one click away (or the filter of the items to review)."""
    decision = review_of(done)
    what = (f"{escape(decision['decision'])}{' with a corrected prompt' if decision.get('prompt') else ''}"
            if decision else "no decision (it changed meanwhile)")
    after = list(shown)[list(shown).index(done) + 1:] + list(shown)
    following = next((e for e in after if e.get("status") == STORED and not review_of(e) and e is not done), None)
    onward = (f"<a href='#{item_anchor(following.get('key'))}'>next to review: {escape(following.get('key'))}</a>"
              if following is not None else
              f"<a href='{escape(href(status='to_review', page=1))}'>items still to review</a>")
    return f"<p class='recorded' role='status'>Recorded: {what} for {escape(done.get('key'))}. {onward}</p>"


@dataclass(frozen=True)
class Decide:
    """A stored item's decision form: approve or reject its edit (the image shown: its ``sha256``), with a note and,
    on rejecting, a corrected prompt. A plain POST (no script) to ``action``, carrying ``token`` against cross-site
    requests."""

    action: str
    token: str

    def form(self, entry: dict[str, Any], back: dict[str, str]) -> str:
        fields = {"key": entry.get("key"), "fingerprint": entry.get("fingerprint"), "sha256": entry.get("sha256") or "",
                  "csrf": self.token, **back}
        hidden = "".join(f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>" for k, v in fields.items())
        return (f"<form class='decide' method='post' action='{escape(self.action)}'>{hidden}"
                "<input type='text' name='note' maxlength='500' placeholder='note (optional)'>"
                "<button name='decision' value='approved'>Approve</button>"
                "<button name='decision' value='rejected'>Reject</button>"
                "<textarea name='prompt' maxlength='4000' placeholder='corrected prompt (optional, with Reject): "
                "the next run edits this item again with it'></textarea></form>")


def _pages(href: Callable[..., str], page: int, pages: int, total: int) -> str:
    previous = f"<a href='{escape(href(page=page - 1))}'>previous</a>" if page > 1 else ""
    following = f"<a href='{escape(href(page=page + 1))}'>next</a>" if page < pages else ""
    return f"<p class='pages'>{previous}<span>page {page} of {pages} ({total:,} items)</span>{following}</p>"


def view_href(base: str, params: dict[str, str]) -> Callable[..., str]:
    """``href`` for ``render_review``: ``base`` with ``params`` and the changes given."""
    def href(**changes: Any) -> str:
        return f"{base}?{urlencode({**params, **{k: str(v) for k, v in changes.items()}})}"
    return href
