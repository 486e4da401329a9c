"""The operator's scrape of pods' /metrics is bounded as Prometheus bounds one (time and bytes),
against real sockets: local HTTP servers standing in for the API server's pod proxy, reached by
the operator's own client through a kubeconfig naming them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from mlkube.controller.kube import Cluster

METRICS = b'mlkube_requests_total{code="200"} 7\n'


class Handler(BaseHTTPRequestHandler):
    """`/.../pods/<behaviour>-<n>:<port>/proxy/metrics`: the pod's name picks how it answers."""

    def do_GET(self) -> None:
        pod = self.path.split("/pods/")[1].split(":")[0]
        behaviour = pod.rsplit("-", 1)[0]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if behaviour == "fine":
            self.send_header("Content-Length", str(len(METRICS)))
            self.end_headers()
            self.wfile.write(METRICS)
        elif behaviour == "drip":  # a byte a second, for ever: no read ever times out
            self.end_headers()
            while True:
                self.wfile.write(b"#")
                self.wfile.flush()
                time.sleep(1)
        elif behaviour == "huge":  # fast, and larger than any /metrics we parse
            self.end_headers()
            for _ in range(1024):
                self.wfile.write(b"# " + b"x" * 8190 + b"\n")

    def log_message(self, *args: object) -> None:
        return None


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """The client hanging up on an endless answer is what the tests want."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig: Path = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(
        yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
            "users": [{"name": "me", "user": {"token": "t"}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "me"}}],
            "current-context": "local",
        })
    )  # fmt: skip
    yield Cluster(str(kubeconfig))
    server.shutdown()


def test_a_pod_that_drips_is_cut_off_at_the_deadline_while_the_others_answer(
    cluster: Cluster,
) -> None:
    pods = ["fine-0", "drip-0", "drip-1", "drip-2", "fine-1"]
    started = time.monotonic()
    scraped = cluster.scrape("ns", pods, 8080, timeout=2.0, max_bytes=4 << 20)
    took = time.monotonic() - started
    assert 2.0 <= took < 2.8, f"one deadline for all the pods, not one per pod: {took:.2f}s"
    assert scraped.texts == {"fine-0": METRICS.decode(), "fine-1": METRICS.decode()}
    assert set(scraped.exceeded) == {"drip-0", "drip-1", "drip-2"}
    assert "within 2s (scrape timeout)" in scraped.exceeded["drip-0"]
    # the connections cut off are not handed out again: the next scrape is whole
    assert cluster.scrape("ns", ["fine-2"], 8080, 2.0, 4 << 20).texts == {
        "fine-2": METRICS.decode()
    }


def test_an_answer_past_the_byte_limit_is_cut_off_without_reading_the_rest(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    scraped = cluster.scrape("ns", ["huge-0"], 8080, timeout=5.0, max_bytes=1 << 20)
    assert time.monotonic() - started < 2.0
    assert scraped.texts == {}
    assert "more than 1048576 bytes" in scraped.exceeded["huge-0"]
    assert cluster.scrape("ns", ["huge-1"], 8080, 5.0, 16 << 20).texts["huge-1"].startswith("# x")
