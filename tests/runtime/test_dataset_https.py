"""https:// datasets (issue 16 item 8): only public addresses, checked after resolving and for every
redirect, https all the way, a byte cap, and no response text in the failure. The server is a
local HTTPS server on 127.0.0.1 with a throwaway certificate for ``data.test``; a stand-in
resolver sends that name there, so no test traffic leaves 127.0.0.1."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import ClassVar

import pytest

from mlkube.api.trainingjob import Dataset
from mlkube.runtime import datasets
from mlkube.runtime.datasets import IPAddress, fetch_https, is_public_address, load_dataset
from mlkube.runtime.outcome import RunFailure

pytestmark = pytest.mark.runtime

HOST = "data.test"
SERVER = IPv4Address("127.0.0.1")
CSV = b"a,b,target\n1,2,0\n3,4,1\n"
SECRET = b"root:x:0:0 internal-only text"


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.8", "172.16.5.4", "172.31.255.255", "192.168.1.1", "127.0.0.1", "127.8.9.10",
        "169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.251", "240.0.0.1",
        "255.255.255.255", "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:10.1.2.3", "::ffff:169.254.169.254", "2002:7f00:1::1",
        "64:ff9b::a9fe:a9fe",
    ],
)  # fmt: skip
def test_private_loopback_link_local_multicast_and_reserved_addresses_are_refused(
    address: str,
) -> None:
    assert not is_public_address(ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_public_address(ip_address(address))


class Handler(BaseHTTPRequestHandler):
    """Each path is one behaviour; `routes` maps a path to (status, headers, body)."""

    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(f"{self.headers['Host']}{self.path}")
        status, headers, body = self.routes.get(self.path, (404, {}, SECRET))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest shows what failed."""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl makes the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={HOST}",
            "-addext", f"subjectAltName=DNS:{HOST}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def server(certificate: tuple[Path, Path]) -> Iterator[int]:
    """A local HTTPS server on 127.0.0.1; yields its port."""
    httpd = ThreadingHTTPServer((str(SERVER), 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = int(httpd.server_address[1])
    base = f"https://{HOST}:{port}"
    Handler.routes = {
        "/data.csv": (200, {"Content-Length": str(len(CSV))}, CSV),
        "/moved": (302, {"Location": "/data.csv"}, b""),
        "/declared-big.csv": (200, {"Content-Length": "5000"}, CSV * 200),
        "/streamed-big.csv": (200, {}, CSV * 200),
        "/error": (500, {"Content-Length": str(len(SECRET))}, SECRET),
        "/forbidden": (403, {"Content-Length": str(len(SECRET))}, SECRET),
        "/to-http": (302, {"Location": f"http://{HOST}:{port}/data.csv"}, b""),
        "/to-loopback": (302, {"Location": f"https://127.0.0.2:{port}/data.csv"}, b""),
        "/to-ipv6-loopback": (302, {"Location": f"https://[::1]:{port}/data.csv"}, b""),
        "/to-metadata": (301, {"Location": "https://169.254.169.254/latest/meta-data/"}, b""),
        "/to-private": (307, {"Location": "https://10.0.0.8/data.csv"}, b""),
        "/loop": (302, {"Location": f"{base}/loop"}, b""),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield port
    httpd.shutdown()
    httpd.server_close()


def stand_in(address: IPAddress) -> bool:
    """The test server plays a public host; every other address is judged as in production."""
    return address == SERVER or is_public_address(address)


def fake_dns(host: str, port: int) -> list[IPAddress]:
    """data.test is the test server; IP literals resolve to themselves; nothing else resolves."""
    if host == HOST:
        return [SERVER]
    return [ip_address(host.strip("[]"))]


@pytest.fixture
def fetch(server: int, certificate: tuple[Path, Path]) -> Callable[..., bytes]:
    trust = ssl.create_default_context(cafile=str(certificate[0]))

    def get(path: str, max_bytes: int = 10_000) -> bytes:
        Handler.seen.clear()
        return fetch_https(
            f"https://{HOST}:{server}{path}",
            max_bytes,
            allowed=stand_in,
            resolve=fake_dns,
            verify=trust,
        )

    return get


def refusal(fetch: Callable[..., bytes], path: str, max_bytes: int = 10_000) -> RunFailure:
    with pytest.raises(RunFailure) as refused:
        fetch(path, max_bytes)
    return refused.value


def test_a_public_host_is_read_over_tls_at_the_checked_address_with_its_name(
    fetch: Callable[..., bytes], server: int
) -> None:
    """The connection goes to the address that was checked; TLS and Host still carry the name."""
    assert fetch("/data.csv") == CSV
    assert Handler.seen == [f"{HOST}:{server}/data.csv"]
    assert fetch("/moved") == CSV


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/to-loopback", "127.0.0.2"),
        ("/to-ipv6-loopback", "::1"),
        ("/to-metadata", "169.254.169.254"),
        ("/to-private", "10.0.0.8"),
    ],
)
def test_a_redirect_to_a_private_address_is_refused_before_connecting(
    fetch: Callable[..., bytes], path: str, target: str
) -> None:
    failure = refusal(fetch, path)
    assert failure.reason == "ForbiddenURI"
    assert f"resolves to {target}" in failure.message
    assert failure.message.startswith("dataset.uri: ")
    assert len(Handler.seen) == 1, "only the first hop was requested"


def test_a_redirect_to_http_is_refused(fetch: Callable[..., bytes]) -> None:
    failure = refusal(fetch, "/to-http")
    assert failure.reason == "ForbiddenURI"
    assert "only https is fetched" in failure.message
    assert len(Handler.seen) == 1


def test_redirects_are_followed_a_few_times_only(fetch: Callable[..., bytes]) -> None:
    failure = refusal(fetch, "/loop")
    assert f"redirects more than {datasets.MAX_REDIRECTS} times" in failure.message
    assert len(Handler.seen) == datasets.MAX_REDIRECTS + 1


@pytest.mark.parametrize("path", ["/declared-big.csv", "/streamed-big.csv"])
def test_a_body_over_the_cap_is_refused_naming_the_cap(
    fetch: Callable[..., bytes], path: str
) -> None:
    failure = refusal(fetch, path, max_bytes=1000)
    assert failure.reason == "DatasetTooLarge"
    assert "larger than the cap of 1000 bytes (MLKUBE_DATASET_MAX_BYTES)" in failure.message
    assert failure.message.startswith("dataset.uri: ")


@pytest.mark.parametrize(("path", "status"), [("/error", 500), ("/forbidden", 403)])
def test_an_error_answer_names_its_status_and_never_its_text(
    fetch: Callable[..., bytes], server: int, path: str, status: int
) -> None:
    failure = refusal(fetch, path)
    assert failure.message == f"dataset.uri: https://{HOST}:{server}{path} answered HTTP {status}"
    assert failure.permanent == (status < 500)


def test_a_name_resolving_to_any_private_address_is_refused(server: int) -> None:
    """Every address a name resolves to is checked, not just the one a client would pick."""
    with pytest.raises(RunFailure) as refused:
        fetch_https(
            f"https://{HOST}:{server}/data.csv",
            10_000,
            allowed=stand_in,
            resolve=lambda host, port: [SERVER, IPv4Address("192.168.0.10")],
        )
    assert "resolves to 192.168.0.10" in refused.value.message


def test_load_dataset_refuses_a_loopback_uri_without_connecting(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production path: real resolution and the real address check."""
    monkeypatch.setenv(datasets.MAX_BYTES_ENV, "1000")
    Handler.seen.clear()
    with pytest.raises(RunFailure) as refused:
        load_dataset(Dataset(uri=f"https://127.0.0.1:{server}/data.csv"))
    assert refused.value.reason == "ForbiddenURI"
    assert "resolves to 127.0.0.1" in refused.value.message
    assert Handler.seen == []


def test_the_cap_defaults_to_1_gib_and_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(datasets.MAX_BYTES_ENV, raising=False)
    assert datasets.max_dataset_bytes() == 1 << 30
    monkeypatch.setenv(datasets.MAX_BYTES_ENV, "2048")
    assert datasets.max_dataset_bytes() == 2048
