"""Source checks against servers that do what the sandbox does not: a raw HTTP/1.1 server on loopback answers
each request with scripted bytes (a 304 that says chunked, a 408 left on an idle connection, 103 Early Hints, a
body that ends short, a redirect loop), and records the request lines it received. Each test would fail on a
pool that hands one source's answer to another, waits for a body that never comes, or takes a broken answer
for a whole one."""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from airflow_provider_cutout.api.sources import Recorded
from airflow_provider_cutout.hooks.cutout import CutoutHook
from tests.conftest import self_signed_cert

Handler = Callable[[socket.socket, bytes, int], bool | None]


def png(width: int, height: int, pad: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * pad


def answer(status: str, body: bytes = b"", **headers: str) -> bytes:
    lines = {"Content-Length": str(len(body)), **{k.replace("_", "-"): v for k, v in headers.items()}}
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n").encode() + body


class RawServer:
    """Calls ``handler(connection, request head, request number)`` for each request; ``False`` closes."""

    def __init__(self, handler: Handler, family: int = socket.AF_INET, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None):
        self.sock = socket.socket(family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_side=True)
        self.port, self.handler, self.requests = self.sock.getsockname()[1], handler, list[str]()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffered = b""
        with conn:
            try:
                while True:
                    while b"\r\n\r\n" not in buffered:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffered += data
                    head, buffered = buffered.split(b"\r\n\r\n", 1)
                    self.requests.append(head.split(b"\r\n")[0].decode())
                    if self.handler(conn, head, len(self.requests)) is False:
                        return
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve(monkeypatch):
    """Start a raw server; the hook's connection points at loopback with a short source timeout."""
    monkeypatch.setenv("AIRFLOW_CONN_CUTOUT_DEFAULT",
                       '{"conn_type": "cutout", "host": "http://127.0.0.1:1", "password": "made-up-key",'
                       ' "extra": {"source_timeout": 3, "connect_timeout": 3}}')
    servers: list[RawServer] = []

    def start(handler: Handler, **where: object) -> RawServer:
        servers.append(RawServer(handler, **where))  # type: ignore[arg-type]
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def hook():
    made = CutoutHook()
    yield made
    made.close()  # the connections kept for the next source


def test_an_unchanged_source_whose_304_says_chunked_is_unchanged_at_once(serve, hook):
    """RFC 9112 lets a 304 carry Transfer-Encoding: chunked, with no body: the check does not wait for one."""
    def handler(conn, head, n):
        if b"If-None-Match" in head:
            conn.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nTransfer-Encoding: chunked\r\n\r\n')
        else:
            conn.sendall(answer("200 OK", png(64, 48), ETag='"v1"', Content_Type="image/png"))

    server, started = serve(handler), time.monotonic()
    known = Recorded.of('"v1"', None)
    infos = [hook.client.inspect_source(f"http://127.0.0.1:{server.port}/{name}.png", known) for name in "ab"]
    assert [(i.status, i.unchanged, i.error) for i in infos] == [(304, True, "")] * 2
    assert time.monotonic() - started < 2  # not after the 3 s source_timeout


def test_an_answer_left_on_an_idle_connection_is_not_taken_for_the_next_source(serve, hook):
    """Some servers write "408 Request Timeout" on a connection that stayed idle, then close it: the next source
    is asked on a new connection and gets its own answer."""
    def handler(conn, head, n):
        path = head.split(b" ")[1].decode()
        body = png(64, 48)
        conn.sendall(answer("206 Partial Content", body, ETag=f'"{path}"', Content_Type="image/png",
                            Content_Range=f"bytes 0-{len(body) - 1}/{len(body)}"))

        def idle() -> None:
            time.sleep(0.2)
            try:
                conn.sendall(answer("408 Request Timeout", Connection="close"))
            except OSError:
                pass
        threading.Thread(target=idle, daemon=True).start()

    server = serve(handler)
    first = hook.client.inspect_source(f"http://127.0.0.1:{server.port}/a.png")
    time.sleep(1.3)  # idle long enough to be checked before it is used: the 408 is seen, the connection dropped
    second = hook.client.inspect_source(f"http://127.0.0.1:{server.port}/b.png")
    assert (first.status, first.validator, second.status, second.validator) == (206, '"/a.png"', 206, '"/b.png"')
    assert server.requests == ["GET /a.png HTTP/1.1", "GET /b.png HTTP/1.1"]
    time.sleep(0.4)  # too short to be checked: the 408 comes as the answer, and the request goes on a new connection
    third = hook.client.inspect_source(f"http://127.0.0.1:{server.port}/c.png")
    assert (third.status, third.validator) == (206, '"/c.png"')
    assert server.requests[2:] in (["GET /c.png HTTP/1.1"], ["GET /c.png HTTP/1.1"] * 2)


def test_after_early_hints_no_source_gets_another_ones_answer(serve, hook):
    """A 103 is not the answer: its connection, with the final answer still to come, is closed, never given to
    the next source (which would then carry this one's version)."""
    def handler(conn, head, n):
        path = head.split(b" ")[1].decode()
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        time.sleep(0.03)
        body = png(64, 48)
        conn.sendall(answer("206 Partial Content", body, ETag=f'"{path}"', Content_Type="image/png",
                            Content_Range=f"bytes 0-{len(body) - 1}/{len(body)}"))

    server = serve(handler)
    for name in "abc":
        info = hook.client.inspect_source(f"http://127.0.0.1:{server.port}/{name}.png")
        assert info.version in ("", f'"/{name}.png"'), info
        time.sleep(0.1)


def test_an_answer_that_ends_before_its_length_is_a_failed_read(serve, hook):
    """Content-Length says 100,000 bytes, the server sends 30,000 and closes: no format, size or version is
    taken from the part (a hash of it would make the next full read look like a changed photo)."""
    def handler(conn, head, n):
        body = png(640, 480, pad=100_000 - 33)
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body[:30_000])
        return False

    server = serve(handler)
    info = hook.client.inspect_source(f"http://127.0.0.1:{server.port}/a.png")
    assert (info.status, info.version, info.error) == (0, "", "the connection failed")


def test_characters_a_request_line_cannot_carry_are_percent_encoded(serve, hook):
    """Sources whose URLs hold characters that must be encoded reach the server encoded (through the session,
    as before), and a redirect loop is named in the error."""
    def handler(conn, head, n):
        path = head.split(b" ")[1].decode()
        if path.startswith("/loop"):
            conn.sendall(answer("302 Found", Location=path))
        else:
            conn.sendall(answer("200 OK", png(64, 48), ETag='"v1"', Content_Type="image/png"))

    server = serve(handler)
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/100%.png", "/a|b.png", "/{sku}.png", '/q"x.png', "/ok.png?sig=a%2Fb"):
        assert hook.client.inspect_source(base + path).status == 200
    assert server.requests == ["GET /100%25.png HTTP/1.1", "GET /a%7Cb.png HTTP/1.1", "GET /%7Bsku%7D.png HTTP/1.1",
                               "GET /q%22x.png HTTP/1.1", "GET /ok.png?sig=a%2Fb HTTP/1.1"]
    assert hook.client.inspect_source(base + "/loop.png").error == "TooManyRedirects"


def test_an_ipv6_source_without_a_port_is_asked_on_port_80(serve, hook):
    """``http://[::1]/a.png``: the brackets are gone from the host, and the default port is said explicitly
    (http.client would read the host "::1" as host ":" and port 1)."""
    def handler(conn, head, n):
        conn.sendall(answer("200 OK", png(64, 48), ETag='"v1"', Content_Type="image/png"))

    try:
        serve(handler, family=socket.AF_INET6, host="::1", port=80)
    except OSError as err:
        pytest.skip(f"cannot listen on [::1]:80 here ({err})")
    info = hook.client.inspect_source("http://[::1]/a.png")
    assert (info.status, info.width, info.error) == (200, 64, "")


def test_a_server_that_answers_a_request_twice_never_hands_the_second_answer_to_the_next_source(serve, hook):
    """The second answer waits on the kept connection: it is seen before the next request goes out (or, for a
    304, by its ETag), and the connection dropped. Every source gets its own answer; none is shifted by one."""
    def handler(conn, head, n):
        path = head.split(b" ")[1].decode()
        first = path.startswith("/a")
        if b"If-None-Match" in head:
            conn.sendall(answer("304 Not Modified", ETag=f'"{path}"'))
        else:
            body = png(64, 48)
            conn.sendall(answer("206 Partial Content", body, ETag=f'"{path}"', Content_Type="image/png",
                                Content_Range=f"bytes 0-{len(body) - 1}/{len(body)}"))
        if first:  # the same answer once more, a little later
            time.sleep(0.03)
            conn.sendall(answer("304 Not Modified", ETag=f'"{path}"'))

    server = serve(handler)
    base = f"http://127.0.0.1:{server.port}"
    first = hook.client.inspect_source(f"{base}/a.png", Recorded.of('"/a.png"', None))
    time.sleep(0.1)  # the second answer has arrived
    infos = [hook.client.inspect_source(f"{base}/{name}.png", Recorded.of(known, None) if known else None)
             for name, known in (("b", '"/b.png"'), ("c", ""), ("d", '"/d.png"'))]
    assert first.unchanged and first.version == '"/a.png"'
    assert [(i.status, i.validator) for i in infos] == [(304, '"/b.png"'), (206, '"/c.png"'), (304, '"/d.png"')]


def test_a_304_that_names_another_version_is_not_taken_for_unchanged(serve, hook):
    """"Not modified", with an ETag other than the one asked about, contradicts itself: the source is read."""
    def handler(conn, head, n):
        if b"If-None-Match" in head:
            conn.sendall(answer("304 Not Modified", ETag='"v2"'))
        else:
            conn.sendall(answer("200 OK", png(64, 48), ETag='"v2"', Content_Type="image/png"))

    server = serve(handler)
    info = hook.client.inspect_source(f"http://127.0.0.1:{server.port}/a.png", Recorded.of('"v1"', None))
    assert (info.unchanged, info.status, info.validator, info.width) == (False, 200, '"v2"', 64)
    assert info.version == "sha256:" + hashlib.sha256(png(64, 48)).hexdigest()
    assert server.requests == ["GET /a.png HTTP/1.1"] * 2


class Proxy:
    """A forward proxy on loopback: ``CONNECT host:port`` opens a tunnel; a request whose target is a whole
    ``http://`` URL is sent on to that server (one connection each) and its answer (framed by Content-Length)
    relayed. Records each request line and its ``Proxy-Authorization``."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests, self.auth, self.connections = list[str](), list[str | None](), 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        with conn:
            while head := _head(reader):
                line, *fields = head.decode().split("\r\n")
                headers = dict(field.split(": ", 1) for field in fields)
                self.requests.append(line)
                self.auth.append(next((headers.pop(k) for k in list(headers) if k.lower() == "proxy-authorization"),
                                      None))
                method, target, version = line.split(" ")
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    upstream = socket.create_connection((host, int(port)))
                    conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
                    _pipe(reader, upstream)
                    return
                where = urlsplit(target)
                with socket.create_connection((where.hostname, where.port or 80)) as upstream:
                    path = where.path + (f"?{where.query}" if where.query else "")
                    upstream.sendall(f"{method} {path} {version}\r\n".encode()
                                     + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n")
                    answered = upstream.makefile("rb")
                    got = _head(answered)
                    length = int(next((f.split(b": ")[1] for f in got.split(b"\r\n")
                                       if f.lower().startswith(b"content-length:")), b"0"))
                    conn.sendall(got + b"\r\n\r\n" + (answered.read(length) if method != "HEAD" else b""))

    def close(self) -> None:
        self.sock.close()


def _head(reader) -> bytes:
    """A request's or an answer's head, without its blank line; ``b""`` at the end."""
    lines = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        lines.append(line)
    return b"".join(lines).removesuffix(b"\r\n")


def _pipe(source, sink: socket.socket) -> None:
    try:
        while data := (source.read1(65536) if hasattr(source, "read1") else source.recv(65536)):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def proxy(monkeypatch):
    """A proxy named in HTTP_PROXY and HTTPS_PROXY, with credentials; NO_PROXY unset."""
    made = Proxy()
    with_user = made.url.replace("http://", "http://photos:p%40ss@")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", with_user)
    monkeypatch.setenv("HTTPS_PROXY", with_user)
    yield made
    made.close()


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """``start(handler)``: a RawServer over TLS, its certificate trusted through REQUESTS_CA_BUNDLE."""
    cert, key = self_signed_cert(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler, tls=context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def photo_or_304(conn, head, n):
    path = head.split(b" ")[1].decode()
    if f'If-None-Match: "{path}"'.encode() in head:
        conn.sendall(answer("304 Not Modified", ETag=f'"{path}"'))
    else:
        conn.sendall(answer("200 OK", png(64, 48), ETag=f'"{path}"', Content_Type="image/png"))


def test_sources_behind_a_proxy_are_checked_through_it(serve, proxy, caplog):
    """HTTP_PROXY: a source is asked through the proxy (its whole URL on the request line, the proxy's
    credentials sent to the proxy; the lean pool leaves it to the session), and asked again with its ETag (a
    304); no log line holds the signed URL's query."""
    server = serve(photo_or_304)
    url = f"http://127.0.0.1:{server.port}/a.png?X-Amz-Signature=secret"
    caplog.set_level("DEBUG", logger="urllib3")
    made = CutoutHook()
    first = made.client.inspect_source(url)
    again = made.client.inspect_source(url, Recorded(first.version, first.validator))
    made.close()
    assert (first.status, first.width, again.unchanged) == (200, 64, True)
    assert proxy.requests == [f"GET {url} HTTP/1.1"] * 2
    assert proxy.auth == ["Basic cGhvdG9zOnBAc3M="] * 2  # photos:p@ss
    assert server.requests == ["GET /a.png?X-Amz-Signature=secret HTTP/1.1"] * 2
    assert "secret" not in caplog.text and "a.png" in caplog.text


def test_https_sources_behind_a_proxy_are_checked_through_a_tunnel(serve, tls, proxy):
    """HTTPS_PROXY: an https source is asked through a CONNECT tunnel, kept for the next check, its server's
    certificate verified against REQUESTS_CA_BUNDLE through it."""
    server = tls(photo_or_304)
    made = CutoutHook()
    url = f"https://127.0.0.1:{server.port}/b.png"
    first = made.client.inspect_source(url)
    again = made.client.inspect_source(url, Recorded(first.version, first.validator))
    made.close()
    assert (first.status, first.width, first.error, again.unchanged) == (200, 64, "", True)
    assert [line.rsplit(" ", 1)[0] for line in proxy.requests] == [f"CONNECT 127.0.0.1:{server.port}"]
    assert proxy.auth == ["Basic cGhvdG9zOnBAc3M="]
    assert server.requests == ["GET /b.png HTTP/1.1"] * 2


def test_no_proxy_sends_sources_past_the_proxy(serve, tls, proxy, monkeypatch):
    """NO_PROXY names the hosts asked directly: the proxy sees nothing."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    plain, secure = serve(photo_or_304), tls(photo_or_304)
    made = CutoutHook()
    infos = [made.client.inspect_source(f"http://127.0.0.1:{plain.port}/c.png"),
             made.client.inspect_source(f"https://127.0.0.1:{secure.port}/d.png")]
    lean = made.client.transport.read_source(f"http://127.0.0.1:{plain.port}/c.png", {}, (3, 3), limit=1 << 20)
    made.close()
    assert lean is not None and lean.status == 200  # not behind the proxy: the lean pool reads it
    assert [(i.status, i.error) for i in infos] == [(200, "")] * 2
    assert proxy.requests == [] and secure.requests == ["GET /d.png HTTP/1.1"]
    assert plain.requests == ["GET /c.png HTTP/1.1"] * 2
