"""``CutoutHook``: the Airflow connection of type ``cutout`` and the one door to the API."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from airflow_provider_cutout.api.models import CreditBalance, ImageEditRequest, ImageEditResult
from airflow_provider_cutout.api.settings import ClientSettings
from airflow_provider_cutout.api.sources import NOT_MODIFIED, Recorded, SourceInfo, source_problems, sources_failed
from airflow_provider_cutout.api.urls import is_object_store_uri, normalise_base_url
from airflow_provider_cutout.exceptions import CutoutError, InvalidInputError, MissingConnectionError
from airflow_provider_cutout.get_provider_info import UI_FIELD_BEHAVIOUR
from airflow_provider_cutout.hooks.listings import listed_etags

if TYPE_CHECKING:
    from airflow_provider_cutout.api.client import CutoutClient

EXTRA_PREFIX = "extra__cutout__"
T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(fn: Callable[[T], R], items: list[T], workers: int, name: str) -> list[R]:
    """``[fn(item) for item in items]``, on ``workers`` threads that take the items in turn. Unlike an executor's
    ``map``, no ``Future`` per item: making 100,000 of them cost a re-run more client CPU than their 304s. The
    first error stops the threads from taking more items and is raised.
    """
    results: list[Any] = [None] * len(items)
    todo, lock, errors = iter(enumerate(items)), threading.Lock(), list[BaseException]()

    def work() -> None:
        while not errors:
            with lock:
                index, item = next(todo, (-1, None))
            if index < 0:
                return
            try:
                results[index] = fn(item)  # type: ignore[arg-type]
            except BaseException as err:
                errors.append(err)

    count = max(1, min(workers, len(items))) if items else 0
    threads = [threading.Thread(target=work, name=f"{name}-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


class CutoutHook(BaseHook):
    """Talk to the Cutout.Pro Image Edit API with the key kept in an Airflow connection.

    The connection's password is the API key, its host the base URL (default
    ``https://www.cutout.pro``; scheme and port are kept, so ``http://127.0.0.1:8080`` reaches the
    sandbox) and its extras the timeout and retry settings of ``ClientSettings``.

    :param cutout_conn_id: id of a connection of type ``cutout``.
    """

    conn_name_attr = "cutout_conn_id"
    default_conn_name = "cutout_default"
    conn_type = "cutout"
    hook_name = "Cutout.Pro"

    def __init__(self, cutout_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cutout_conn_id = cutout_conn_id
        self._inspected: dict[str, SourceInfo] = {}  # source URL -> what its check found, for this hook's life
        self._filesystems: dict[tuple[str, str | None], Any] = {}  # (protocol, conn id) -> the store's filesystem
        self._stopped = False  # stop(): every client of this hook sends nothing more

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form: hide unused fields, label the password "API Key" and host "Base URL"."""
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    @cached_property
    def connection(self) -> Any:
        """The Airflow connection, looked up once per hook.

        :raises MissingConnectionError: naming the conn id, the type ``cutout`` and how to define it.
        """
        conn_id = self.cutout_conn_id
        env = f"AIRFLOW_CONN_{conn_id.upper().replace('-', '_')}"
        how = (f"define it in the UI (Admin > Connections, type 'Cutout.Pro') or from the environment: "
               f"{env}='{{\"conn_type\": \"cutout\", \"password\": \"<your API key>\"}}' (docs/connection.md)")
        try:
            conn = self.get_connection(conn_id)
        except Exception as err:
            if type(err).__name__ != "AirflowNotFoundException":  # airflow.exceptions or airflow.sdk.exceptions
                raise
            raise MissingConnectionError(f"the connection {conn_id!r} is not defined: {how}") from None
        if conn.conn_type and conn.conn_type != self.conn_type:
            raise MissingConnectionError(f"the connection {conn_id!r} has type {conn.conn_type!r}, not 'cutout': "
                                         f"{how}")
        return conn

    @cached_property
    def base_url(self) -> str:
        """The API's base URL from the connection's host (and port, if given apart)."""
        return normalise_base_url(self.connection.host, self.connection.port)

    @cached_property
    def client(self) -> CutoutClient:
        """The pooled HTTP client, built once per hook from the connection."""
        from airflow.sdk.log import mask_secret

        from airflow_provider_cutout.api.client import CutoutClient

        conn = self.connection
        api_key = conn.password or ""
        if api_key:
            mask_secret(api_key)
        extras = {
            key.removeprefix(EXTRA_PREFIX): value
            for key, value in (conn.extra_dejson or {}).items()
            if value not in (None, "")
        }
        settings = ClientSettings.from_extras(self.base_url, extras)
        client = CutoutClient(api_key, settings, logger=self.log)  # type: ignore[arg-type]
        if self._stopped:
            client.stop()
        return client

    def get_conn(self) -> CutoutClient:
        """Return the pooled client (Airflow's usual hook entry point)."""
        return self.client

    def stop(self) -> None:
        """Send nothing more (``on_kill``): an edit waiting to be retried wakes and is not sent, and no edit of this
        hook's client starts after this; reads (result downloads, the balance) go on. Safe from any thread."""
        self._stopped = True
        if "client" in self.__dict__:
            self.client.stop()

    def close(self) -> None:
        """Close the client's pooled connections, if a client was built."""
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    def validate(
        self, prompt: Any, image_urls: Any, model: Any, aspect_ratio: Any = "original"
    ) -> ImageEditRequest:
        """Validate an edit for this connection without sending anything.

        :raises InvalidInputError: naming the field, the value and the fix.
        """
        try:
            return ImageEditRequest.build(prompt, image_urls, model, aspect_ratio, base_url=self.base_url)
        except ValueError as err:
            raise InvalidInputError(str(err)) from None

    def edit_image(
        self, prompt: str, image_urls: str | list[str], model: str, aspect_ratio: str = "original",
        *, check_sources: bool | None = None,
    ) -> ImageEditResult:
        """Validate (the source images too, unless turned off), then run one edit; costs the model's credits
        when it succeeds.

        :param prompt: what to change in the image(s).
        :param image_urls: one URL or a list of https URLs of JPEG/PNG source images.
        :param model: a model name from ``airflow_provider_cutout.models.MODELS``.
        :param aspect_ratio: ``original``, ``1:1``, ``4:3``, ``3:4``, ``9:16`` or ``16:9``.
        :param check_sources: read each source's first bytes first; the connection's ``check_sources`` by default.
        """
        request = self.validate(prompt, image_urls, model, aspect_ratio)
        if self.checks_sources(check_sources):
            self.check_sources({"": request})
        return self.send_edit(request)

    def send_edit(self, request: ImageEditRequest) -> ImageEditResult:
        """Send a validated edit, its object-store sources signed; an error names the sources by their URIs,
        never by their signed URLs."""
        urls = self.fetchable(request.image_urls)
        try:
            return self.client.edit_image(request, source_urls=[urls[url] for url in request.image_urls])
        except CutoutError as err:
            clean = _redacted(err, {signed: url for url, signed in urls.items() if signed != url})
            if clean is err:
                raise
            raise clean from None

    def fetchable(self, urls: Iterable[str]) -> dict[str, str]:
        """The URL the API (and the source checks) fetch for each source: an object-store URI
        (``s3://conn_id@bucket/key``) signed for ``signed_url_expiry`` seconds, any other URL as it is. A
        signed URL is never logged: source checks go through ``http.client``, which logs nothing, the
        transport hides the query of URLs in urllib3's debug lines, and errors name the URI (registering every
        signed URL with Airflow's secrets masker would recompile one pattern of all of them per URL: quadratic
        over a catalog)."""
        return {url: self._sign(url) if is_object_store_uri(url) else url for url in urls}

    def _sign(self, uri: str) -> str:
        from airflow.sdk import ObjectStoragePath

        try:
            path = ObjectStoragePath(uri)
            store = (path.protocol, path.conn_id)
            if store not in self._filesystems:  # attaching a store costs ~35 ms (its connection, a client)
                self._filesystems[store] = path.fs
            signed = signed_url(self._filesystems[store], path, self.client.settings.signed_url_expiry)
        except InvalidInputError:
            raise
        except (NotImplementedError, ValueError, TypeError, OSError) as err:
            raise InvalidInputError(
                f"{uri!r} cannot be given a signed URL for the API ({type(err).__name__}: {err}); check its "
                "connection id, or serve the image over https"
            ) from None
        return signed

    def checks_sources(self, asked: bool | None) -> bool:
        """Whether sources are checked: ``asked`` when given, else the connection's ``check_sources``."""
        return self.client.settings.check_sources if asked is None else bool(asked)

    def inspect_sources(self, urls: Iterable[str], *, concurrency: int = 8,
                        known: Mapping[str, Recorded] | None = None) -> dict[str, SourceInfo]:
        """Read and hash each source (``concurrency`` at a time; each URL once per hook).

        :param known: what was recorded of a URL when it was read before. Such a source is only asked whether
            it changed: an object-store source by one listing of its folder, any other by a conditional GET (its
            validator); unchanged, its info says ``unchanged`` and holds only the version. Without ``known``,
            every source is read (what the checks of an edit about to be paid for need).
        """
        urls, known = list(dict.fromkeys(urls)), known or {}
        todo = [url for url in urls if url not in self._inspected or (self._inspected[url].unchanged and not known)]
        listed = listed_etags([url for url in todo if url in known and is_object_store_uri(url)],
                              concurrency=concurrency)
        unchanged = {url for url, etags in listed.items() if known[url].validator in etags}
        for url in unchanged:
            self._inspected[url] = SourceInfo(url, NOT_MODIFIED, version=known[url].version,
                                              validator=known[url].validator, unchanged=True,
                                              legacy=known[url].version)
        todo = [url for url in todo if url not in unchanged]
        for info in map_in_threads(lambda url: self._inspect(url, known.get(url)), todo,
                                   min(concurrency, len(todo)), "cutout-source"):
            self._inspected[info.url] = info
        return {url: self._inspected[url] for url in urls}

    def with_versions(self, requests: list[ImageEditRequest], *, concurrency: int = 8,
                      known: Mapping[str, Recorded] | None = None) -> list[ImageEditRequest]:
        """The requests with their sources' content versions (read by the source checks), so a photo
        replaced under the same URL makes a new edit; a request with a source that could not be read keeps
        its unversioned fingerprint.

        :param known: the versions recorded when the sources were read before (see ``inspect_sources``).
        """
        infos = self.inspect_sources((url for r in requests for url in r.image_urls), concurrency=concurrency,
                                     known=known)
        versions = {url: (info.version, info.validator, info.legacy) for url, info in infos.items() if info.versioned}
        return [request.with_versions(versions) for request in requests]

    def _inspect(self, url: str, known: Recorded | None = None) -> SourceInfo:
        fetch = self.fetchable([url])[url]
        info = self.client.inspect_source(fetch, known)
        return info if fetch == url else replace(info, url=url)  # its texts never hold the fetched URL

    def check_sources(self, requests: Mapping[str, ImageEditRequest], *, concurrency: int = 8) -> None:
        """Check the sources of validated edits before anything is paid for: reachable, JPEG or PNG, within
        their model's limits.

        :param requests: the edits by what names them in errors (an item's ``"item 'key': "``, or ``""``).
        :raises InvalidInputError: listing every source that fails, each with the rule and the fix.
        """
        problems = [p for found in self.failing_sources(requests, concurrency=concurrency).values() for p in found]
        if problems:
            raise sources_failed(problems)

    def failing_sources(self, requests: Mapping[str, ImageEditRequest], *, concurrency: int = 8
                        ) -> dict[str, list[str]]:
        """``check_sources`` without raising: the problems of each edit whose sources fail, by its name."""
        infos = self.inspect_sources((url for r in requests.values() for url in r.image_urls), concurrency=concurrency)
        found = {name: [problem for i, url in enumerate(r.image_urls)
                        for problem in source_problems(infos[url], r.model, f"{name}image_urls[{i}]")]
                 for name, r in requests.items()}
        return {name: problems for name, problems in found.items() if problems}

    def get_credit_balance(self) -> CreditBalance:
        """Return the account's credit balance (costs nothing)."""
        return self.client.get_credit_balance()

    def test_connection(self) -> tuple[bool, str]:
        """Check the key by reading the balance (``GET /api/v1/mySubscription``, no credits spent)."""
        try:
            balance = self.get_credit_balance()
        except CutoutError as err:
            return False, f"Cutout.Pro connection failed: {err}"
        finally:
            self.close()
        return True, (
            f"Connected to {self.base_url}: {balance.total:g} image credits available "
            f"(monthly {balance.month_balance:g}, pay-as-you-go {balance.image_balance:g})"
        )


def _redacted(err: CutoutError, signed: dict[str, str]) -> CutoutError:
    """``err`` with each signed URL in its texts replaced by the URI it was made for, and any signature
    (query) quoted apart hidden: a signed URL is a credential. ``err`` itself when it holds none."""
    secrets = {url: uri for url, uri in signed.items()}
    secrets |= {query: "<signature hidden>" for query in (urlsplit(url).query for url in signed) if query}
    texts = {name: value for name, value in vars(err).items() if isinstance(value, str)}
    if not any(secret in text for secret in secrets for text in texts.values()):
        return err
    clean = copy.copy(err)
    for name, text in texts.items():
        for secret, shown in secrets.items():
            text = text.replace(secret, shown)
        setattr(clean, name, text)
    clean.args = (clean.message,)
    return clean


def signed_url(fs: Any, path: Any, expiry: int) -> str:
    """A URL for the object at ``path`` that the API can fetch for ``expiry`` seconds. GCS signs with a private
    key; credentials without one (Cloud Composer's, a VM's, workload identity) sign through the IAM signBlob API
    as their service account, which needs the Service Account Token Creator role on itself."""
    try:
        return str(fs.sign(path.path, expiration=expiry))
    except AttributeError as err:  # google-auth: "you need a private key to sign credentials"
        if path.protocol not in ("gs", "gcs"):
            raise
        email, token = _service_account(fs)
        if not email or not token:
            raise InvalidInputError(
                f"{path} cannot be given a signed URL for the API: the connection's credentials have no private key "
                f"and name no service account ({err}). Give the connection a service-account key (Keyfile JSON), "
                "or run with a service account's credentials (as Cloud Composer does) that may sign through IAM: "
                "grant it roles/iam.serviceAccountTokenCreator on itself") from None
        try:
            return str(fs.sign(path.path, expiration=expiry, service_account_email=email, access_token=token))
        except Exception as iam:  # the IAM API refused (no role), or could not be reached
            raise InvalidInputError(
                f"{path} cannot be given a signed URL for the API: signing through IAM as {email} failed "
                f"({type(iam).__name__}: {str(iam)[:300]}); grant {email} roles/iam.serviceAccountTokenCreator on "
                "itself, or give the connection a service-account key (Keyfile JSON)") from None


def _service_account(fs: Any) -> tuple[str | None, str | None]:
    """The service account and a fresh access token of a GCS file system's credentials, when they have them."""
    credentials = getattr(getattr(fs, "credentials", None), "credentials", None)
    email = getattr(credentials, "service_account_email", None)
    if credentials is None or not hasattr(credentials, "refresh") or not email:
        return None, None
    if not getattr(credentials, "valid", False) or email == "default":  # a VM's: named once refreshed
        from google.auth.transport.requests import Request

        try:
            credentials.refresh(Request())
        except Exception:  # no metadata server, no network: the caller says what to do
            return None, None
    return getattr(credentials, "service_account_email", None), getattr(credentials, "token", None)
