"""Serve one iris LogisticRegression with mlkube and its peers, and load each the same way.

Servers (each peer in its own venv, made by ``benchmarks/setup_serving_peers.sh``):

- ``mlkube``: ``python -m mlkube.runtime.serving_cli`` from /work/main/.venv (what a pod runs),
  with validation, metrics and the inference log on; rows as objects (``instances``).
- ``mlkube-columnar``: the same server, the same rows as columns (``inputs``).
- ``mlkube-oip``: the same server, the same rows through the Open Inference Protocol
  (``POST /v2/models/iris/infer``, one FP64 input per column, MLServer's pandas shape), and
  ``mlkube-oip-tensor``: one [N, 4] FP64 tensor, the body the ``mlserver`` peer gets. Their target
  is /predict's own throughput (``mlkube``), as the floor reads neither body.
- ``bentoml``: stock BentoML 1.4, a plain ``@bentoml.service`` with a sync ``@bentoml.api``,
  run by ``bentoml serve``.
- ``mlserver``: MLServer 1.7 with ``mlserver_sklearn.SKLearnModel`` (V2 inference protocol).
- ``kserve``: KServe 0.21's Python model server, a ``kserve.Model`` subclass (V1 protocol).
- ``floor``: a minimal Starlette app on uvicorn with uvloop and httptools.
- ``raw``: the raw floor, a bare ASGI function on uvicorn (uvloop, httptools) that decodes with
  orjson, calls ``predict_proba`` once and answers labels and probabilities, with no checks: the
  least any Python server can do per request. Runs from /work/main/.venv. It reads rows as lists
  (``{"instances": [[...], ...]}``), the body the peers get.
- ``raw-rows`` and ``raw-columnar``: the same raw floor reading mlkube's two bodies, rows as objects
  and columns (an ``itemgetter`` per row, a ``column_stack``), still with no checks. A body of
  named rows is four times the bytes of bare lists and decodes twice as slowly, whoever reads it,
  so mlkube's targets are judged against the floor that reads the same request.

Load: ``wrk`` (one thread, keep-alive, a Lua script for the POST body) on loopback, for
concurrency 1, 8 and 32 and 1-row and 100-row requests, ``--duration`` seconds per cell after a
short warm-up. With ``--pin`` servers run on CPU 0 and wrk on CPU 1, so the load generator does
not steal the server's core. Also measured: the RSS of each server's
process tree after its load, and its cold start (process start -> first successful prediction).
Ratios are to the raw floor (to the Starlette floor when the raw one is not run); the targets
compare each mlkube body with the raw floor reading that same body. Figures are printed, never
asserted.

Usage: ``.venv/bin/python benchmarks/serving_benchmark.py [--duration 10] [--only mlkube,floor]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlkube.api.modelversion import Column
from mlkube.layout import SCHEMA_FILE
from mlkube.runtime import artifacts

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CONCURRENCIES = (1, 8, 32)
THROUGHPUT_TARGETS = {1: 0.9, 100: 0.9}
OIP_TARGET = 0.9
"""The Open Inference Protocol's requests/s over /predict's, same rows (issue 17 item 5)."""
"""mlkube's requests/s over the raw floor's reading the same body, by rows per request."""
P99_TARGET = 1.5
TARGET_CONCURRENCIES = (1, 8)
"""The targets hold at each of these that a run measures (issue 17: p99 at 1 as well as 8)."""
ROW_COUNTS = (1, 100)
STARTUP_SECONDS = 120.0
FLOOR = "floor"
RAW = "raw"

STOCK_BENTOML_SERVICE = """
import os

import bentoml
import joblib
import numpy as np


@bentoml.service(workers=1)
class IrisClassifier:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL_FILE"])

    @bentoml.api
    def predict(self, instances: list[list[float]]) -> list[int]:
        return self.model.predict(np.asarray(instances)).tolist()
"""

KSERVE_SERVER = """
import os

import joblib
import kserve
import numpy as np


class IrisClassifier(kserve.Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.model = joblib.load(os.environ["BENCH_MODEL_FILE"])
        self.ready = True

    def predict(self, payload, headers=None):
        return {"predictions": self.model.predict(np.asarray(payload["instances"])).tolist()}


if __name__ == "__main__":
    kserve.ModelServer().start([IrisClassifier("iris")])
"""

FLOOR_SERVER = """
import os
import sys

import joblib
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

model = joblib.load(os.environ["BENCH_MODEL_FILE"])


async def predict(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"predictions": model.predict(np.asarray(body["instances"])).tolist()})


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""

RAW_FLOOR_SERVER = """
import json
import os
import sys
from operator import itemgetter

import joblib
import numpy as np
import orjson
import uvicorn

model = joblib.load(os.environ["BENCH_MODEL_FILE"])
classes = model.classes_
HEADERS = [(b"content-type", b"application/json")]
FEATURES = json.loads(os.environ["BENCH_FEATURES"])
row = itemgetter(*FEATURES)
READERS = {
    "lists": lambda document: np.array(document["instances"], dtype=np.float64),
    "rows": lambda document: np.array(list(map(row, document["instances"])), dtype=np.float64),
    "columns": lambda document: np.column_stack([document["inputs"][name] for name in FEATURES]).astype(np.float64),
}
read = READERS[sys.argv[2]]


async def app(scope, receive, send):
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    probabilities = model.predict_proba(read(orjson.loads(body)))
    answer = orjson.dumps(
        {"predictions": classes[probabilities.argmax(axis=1)].tolist(),
         "probabilities": probabilities.tolist()}
    )
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": answer})


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            lifespan="off", log_level="warning", access_log=False)
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY_FILE")):read("*a")

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "non2xx": %d, ' ..
    '"socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
"""


@dataclass(frozen=True)
class Peer:
    """How to start one server and what its prediction request looks like."""

    name: str
    venv: str | None  # None: the main venv
    path: str
    command: Callable[[Path, int], list[str]]
    body: Callable[[list[list[float]]], Any]
    env: Callable[[Path], dict[str, str]]


@dataclass(frozen=True)
class Cell:
    concurrency: int
    rows: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    failures: int
    cpu_us_per_request: float  # server CPU time (user + system, whole tree) per answered request


@dataclass(frozen=True)
class Run:
    peer: str
    cold_start_seconds: float
    rss_mb: float
    cells: list[Cell]

    def cell(self, concurrency: int, rows: int) -> Cell:
        return next(c for c in self.cells if (c.concurrency, c.rows) == (concurrency, rows))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def venv_bin(peer: Peer, program: str) -> str:
    venv = ROOT / (peer.venv or ".venv")
    return str(venv / "bin" / program)


def make_model(work: Path) -> Path:
    """The iris LogisticRegression, stored as mlkube stores it; peers load the same file."""
    iris = load_iris()
    estimator = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    directory = work / "model"
    artifacts.save_model(str(directory), estimator)
    schema = artifacts.ModelSchema(
        task="classification",
        target="species",
        columns=[Column(name=name, type="float") for name in FEATURES],
        classes=[str(c) for c in estimator.classes_],
    )
    artifacts.write_json(artifacts.join(str(directory), SCHEMA_FILE), schema.to_json())
    return directory


def write_peer_files(work: Path, model_dir: Path) -> None:
    (work / "bentoml_service.py").write_text(STOCK_BENTOML_SERVICE)
    (work / "kserve_server.py").write_text(KSERVE_SERVER)
    (work / "floor_server.py").write_text(FLOOR_SERVER)
    (work / "raw_floor_server.py").write_text(RAW_FLOOR_SERVER)
    mlserver = work / "mlserver" / "iris"
    mlserver.mkdir(parents=True)
    (mlserver / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "iris",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": str(model_dir / "model.joblib")},
            }
        )
    )


def mlserver_command(work: Path, port: int) -> list[str]:
    settings = {
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "host": "127.0.0.1",
    }
    (work / "mlserver" / "settings.json").write_text(json.dumps(settings))
    return [venv_bin(PEERS["mlserver"], "mlserver"), "start", str(work / "mlserver")]


def mlkube_command(work: Path, port: int) -> list[str]:
    return [
        str(ROOT / ".venv/bin/python"), "-m", "mlkube.runtime.serving_cli",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def mlkube_env(work: Path) -> dict[str, str]:
    """Validation and metrics are always on; the inference log is on here too."""
    return {
        "MLKUBE_MODEL_URI": str(work / "model"),
        "MLKUBE_MODEL_VERSION": "bench",
        "MLKUBE_MODEL_NAME": "iris",
        "MLKUBE_INFERENCE_LOG_URI": str(work / "inference-log"),
        "BENTOML_HOME": str(work / "bentoml-home-mlkube"),
    }


def row_body(rows: list[list[float]]) -> Any:
    return {"instances": [dict(zip(FEATURES, r, strict=True)) for r in rows]}


def column_body(rows: list[list[float]]) -> Any:
    return {"inputs": dict(zip(FEATURES, map(list, zip(*rows, strict=True)), strict=True))}


def oip_column_body(rows: list[list[float]]) -> Any:
    """One input per column, as MLServer's pandas codec and tritonclient send a table."""
    return {
        "inputs": [
            {"name": name, "shape": [len(rows)], "datatype": "FP64", "data": list(column)}
            for name, column in zip(FEATURES, zip(*rows, strict=True), strict=True)
        ]
    }


def oip_tensor_body(rows: list[list[float]]) -> Any:
    """One [N, F] tensor, flat in row-major order."""
    data = [v for r in rows for v in r]
    return {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), len(FEATURES)],
                "datatype": "FP64",
                "data": data,
            }
        ]
    }


def raw_floor_command(reader: str) -> Callable[[Path, int], list[str]]:
    """The raw floor reading request bodies as `reader` says: lists, rows or columns."""
    return lambda work, port: [
        str(ROOT / ".venv/bin/python"), str(work / "raw_floor_server.py"), str(port), reader,
    ]  # fmt: skip


def model_file_env(work: Path) -> dict[str, str]:
    return {"BENCH_MODEL_FILE": str(work / "model" / "model.joblib")}


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in [
        Peer(
            name="mlkube",
            venv=None,
            path="/predict",
            command=mlkube_command,
            body=row_body,
            env=mlkube_env,
        ),
        Peer(
            name="mlkube-columnar",
            venv=None,
            path="/predict",
            command=mlkube_command,
            body=column_body,
            env=mlkube_env,
        ),
        *(
            Peer(
                name=name,
                venv=None,
                path="/v2/models/iris/infer",
                command=mlkube_command,
                body=body,
                env=mlkube_env,
            )
            for name, body in [("mlkube-oip", oip_column_body), ("mlkube-oip-tensor", oip_tensor_body)]
        ),
        Peer(
            name="bentoml",
            venv=".venv-bench-bentoml",
            path="/predict",
            command=lambda work, port: [
                venv_bin(PEERS["bentoml"], "bentoml"), "serve", "bentoml_service:IrisClassifier",
                "--host", "127.0.0.1", "--port", str(port),
            ],
            body=lambda rows: {"instances": rows},
            env=lambda work: model_file_env(work)
            | {"BENTOML_HOME": str(work / "bentoml-home-stock"), "BENTOML_DO_NOT_TRACK": "true"},
        ),
        Peer(
            name="mlserver",
            venv=".venv-bench-mlserver",
            path="/v2/models/iris/infer",
            command=mlserver_command,
            body=oip_tensor_body,
            env=lambda work: {},
        ),
        Peer(
            name="kserve",
            venv=".venv-bench-kserve",
            path="/v1/models/iris:predict",
            command=lambda work, port: [
                venv_bin(PEERS["kserve"], "python"), str(work / "kserve_server.py"),
                "--http_port", str(port), "--grpc_port", str(free_port()), "--workers", "1",
            ],
            body=lambda rows: {"instances": rows},
            env=model_file_env,
        ),
        Peer(
            name=FLOOR,
            venv=".venv-bench-starlette",
            path="/predict",
            command=lambda work, port: [
                venv_bin(PEERS[FLOOR], "python"), str(work / "floor_server.py"), str(port),
            ],
            body=lambda rows: {"instances": rows},
            env=model_file_env,
        ),
        *(
            Peer(
                name=name,
                venv=None,
                path="/predict",
                command=raw_floor_command(reader),
                body=body,
                env=lambda work: model_file_env(work) | {"BENCH_FEATURES": json.dumps(FEATURES)},
            )
            for name, reader, body in [
                (RAW, "lists", lambda rows: {"instances": rows}),
                ("raw-rows", "rows", row_body),
                ("raw-columnar", "columns", column_body),
            ]
        ),
    ]
}  # fmt: skip
SAME_BODY_FLOOR = {"mlkube": "raw-rows", "mlkube-columnar": "raw-columnar"}
"""The raw floor that reads the same request body as each mlkube run."""


def request_rows(count: int) -> list[list[float]]:
    data = load_iris().data
    return [[float(v) for v in data[i % len(data)]] for i in range(count)]


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mb(pid: int) -> float:
    total = 0
    for process in process_tree(pid):
        with suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for process in process_tree(pid):
        with suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextmanager
def running(
    peer: Peer, work: Path, log: Path, pin: list[str]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {**os.environ, **peer.env(work)}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [*pin, *peer.command(work, port)],
            cwd=work,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process, port
        finally:
            with_signal(process, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with_signal(process, signal.SIGKILL)
                process.wait()


def with_signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def wait_first_prediction(
    process: subprocess.Popen[bytes], url: str, body: Any, started: float, log: Path
) -> float:
    deadline = started + STARTUP_SECONDS
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited {process.returncode}: see {log}")
            try:
                if client.post(url, json=body).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"no successful prediction after {STARTUP_SECONDS} s: see {log}")


@dataclass(frozen=True)
class Load:
    """wrk against one server: the URL, the Lua script and where to pin wrk."""

    url: str
    script: Path
    pin: list[str]
    server_pid: int

    def run(self, body_file: Path, concurrency: int, seconds: float, rows: int) -> Cell:
        command = [
            *self.pin, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(self.script), self.url,
        ]  # fmt: skip
        env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
        cpu_before = tree_cpu_seconds(self.server_pid)
        output = subprocess.run(
            command, env=env, capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
        cpu = tree_cpu_seconds(self.server_pid) - cpu_before
        line = next(line for line in output.splitlines() if line.startswith("BENCH "))
        result = json.loads(line.removeprefix("BENCH "))
        answered = max(1, result["requests"])
        return Cell(
            concurrency=concurrency,
            rows=rows,
            requests_per_second=result["requests"] / result["seconds"],
            p50_ms=result["p50_us"] / 1000,
            p99_ms=result["p99_us"] / 1000,
            failures=result["non2xx"] + result["socket_errors"],
            cpu_us_per_request=cpu / answered * 1e6,
        )


def benchmark(
    peer: Peer,
    work: Path,
    duration: float,
    warmup: float,
    pin: bool,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
) -> Run:
    log = work / f"{peer.name}.log"
    bodies = {}
    for rows in ROW_COUNTS:
        bodies[rows] = work / f"{peer.name}-{rows}.json"
        bodies[rows].write_text(json.dumps(peer.body(request_rows(rows))))
    started = time.monotonic()
    with running(peer, work, log, taskset(0) if pin else []) as (process, port):
        url = f"http://127.0.0.1:{port}{peer.path}"
        cold_start = wait_first_prediction(process, url, peer.body(request_rows(1)), started, log)
        load = Load(url, work / "post.lua", taskset(1) if pin else [], process.pid)
        cells: list[Cell] = []
        for rows in ROW_COUNTS:
            load.run(bodies[rows], 8, warmup, rows)
            for concurrency in concurrencies:
                cell = load.run(bodies[rows], concurrency, duration, rows)
                cells.append(cell)
                print(f"  {peer.name:16} c={concurrency:<3} rows={rows:<4} "
                      f"{cell.requests_per_second:8.0f} req/s  p50 {cell.p50_ms:7.2f} ms  "
                      f"p99 {cell.p99_ms:7.2f} ms  cpu {cell.cpu_us_per_request:6.0f} us/req  "
                      f"failures {cell.failures}", flush=True)  # fmt: skip
        rss = tree_rss_mb(process.pid)
    return Run(peer.name, cold_start, rss, cells)


def taskset(cpu: int) -> list[str]:
    """Pin to one CPU (--pin), so the server and wrk do not share a core."""
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def best_of(runs: list[Run]) -> Run:
    """Per cell the round with the most requests/s; the lowest cold start; the largest RSS."""
    first = runs[0]
    cells = [
        max((r.cell(c.concurrency, c.rows) for r in runs), key=lambda x: x.requests_per_second)
        for c in first.cells
    ]
    return Run(
        first.peer,
        min(r.cold_start_seconds for r in runs),
        max(r.rss_mb for r in runs),
        cells,
    )


def ratio(value: float, floor: float | None) -> str:
    return f"{value / floor:5.2f}x" if floor else "    -"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def report(runs: list[Run]) -> None:
    floor = next((r for r in runs if r.peer == RAW), None) or next(
        (r for r in runs if r.peer == FLOOR), None
    )
    print(f"\nratios to the {floor.peer if floor else '-'} floor")
    print(
        "server           conc rows     req/s   p50 ms   p99 ms  CPU us/req fails"
        "  req/s÷floor  p99÷floor  CPU÷floor"
    )
    for rows in ROW_COUNTS:
        for concurrency in sorted({c.concurrency for c in runs[0].cells}):
            base = floor.cell(concurrency, rows) if floor else None
            for run in runs:
                cell = run.cell(concurrency, rows)
                print(
                    f"{run.peer:16} {concurrency:4} {rows:4} {cell.requests_per_second:9.0f} "
                    f"{cell.p50_ms:8.2f} {cell.p99_ms:8.2f} {cell.cpu_us_per_request:11.0f} "
                    f"{cell.failures:5}"
                    f"       {ratio(cell.requests_per_second, base.requests_per_second if base else None)}"
                    f"     {ratio(cell.p99_ms, base.p99_ms if base else None)}"
                    f"     {ratio(cell.cpu_us_per_request, base.cpu_us_per_request if base else None)}"
                )
            print()
    print("server           RSS MB  cold start s  RSS÷floor  cold÷floor")
    for run in runs:
        print(
            f"{run.peer:16} {run.rss_mb:6.0f} {run.cold_start_seconds:13.2f}"
            f"      {ratio(run.rss_mb, floor.rss_mb if floor else None)}"
            f"      {ratio(run.cold_start_seconds, floor.cold_start_seconds if floor else None)}"
        )
    by_peer = {r.peer: r for r in runs}
    # each mlkube body against the raw floor reading that body (else the lists floor), OIP
    # against /predict: a run without the lists floor still prints its targets
    ours_runs = [r for r in runs if r.peer.startswith("mlkube")]
    if not ours_runs:
        return
    measured = {c.concurrency for c in runs[0].cells}
    for concurrency in (c for c in TARGET_CONCURRENCIES if c in measured):
        print(
            f"\ntargets at concurrency {concurrency} against the raw floor reading the same body "
            "(not asserted):"
        )
        for mlkube in ours_runs:
            if mlkube.peer.startswith("mlkube-oip"):
                for rows in ROW_COUNTS if "mlkube" in by_peer else ():
                    ours, rest = (
                        mlkube.cell(concurrency, rows),
                        by_peer["mlkube"].cell(concurrency, rows),
                    )
                    print(
                        f"  {mlkube.peer} rows={rows}: throughput "
                        f"{ours.requests_per_second / rest.requests_per_second:.2f}x mlkube's "
                        f"/predict (target >= {OIP_TARGET}), p99 "
                        f"{ours.p99_ms / rest.p99_ms:.2f}x"
                    )
                continue
            same = by_peer.get(SAME_BODY_FLOOR.get(mlkube.peer, ""), floor)
            if same is None:
                continue
            for rows in ROW_COUNTS:
                ours, base = mlkube.cell(concurrency, rows), same.cell(concurrency, rows)
                peers = [
                    r.cell(concurrency, rows)
                    for r in runs
                    if not r.peer.startswith(("mlkube", FLOOR, RAW))
                ]
                ahead = (
                    f", ahead of every peer: "
                    f"{all(ours.requests_per_second > p.requests_per_second for p in peers)}"
                    if peers
                    else ""
                )
                print(
                    f"  {mlkube.peer} rows={rows}: throughput "
                    f"{ours.requests_per_second / base.requests_per_second:.2f}x {same.peer} "
                    f"(target >= {THROUGHPUT_TARGETS[rows]}), p99 "
                    f"{ours.p99_ms / base.p99_ms:.2f}x (target <= {P99_TARGET}){ahead}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each row size")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all servers, keep the best")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1")
    parser.add_argument("--only", default=",".join(PEERS), help="comma-separated servers")
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, CONCURRENCIES)),
        help="comma-separated connection counts (8 is the one the targets use)",
    )
    parser.add_argument("--skip-setup", action="store_true", help="do not (re)make peer venvs")
    options = parser.parse_args()
    names = [n for n in options.only.split(",") if n]
    unknown = set(names) - set(PEERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {list(PEERS)}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    peers = [PEERS[n] for n in names]
    concurrencies = tuple(int(c) for c in options.concurrency.split(",") if c)
    if not options.skip_setup:
        venvs = [p.name if p.name != FLOOR else "starlette" for p in peers if p.venv]
        if venvs:
            subprocess.run([str(ROOT / "benchmarks/setup_serving_peers.sh"), *venvs], check=True)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} {os.cpu_count()} CPUs, load average "
        f"{load_average()}; {options.duration:g} s per cell, {options.rounds} round(s), "
        f"{'pinned' if options.pin else 'not pinned'}"
    )
    rounds: dict[str, list[Run]] = {p.name: [] for p in peers}
    with tempfile.TemporaryDirectory(prefix="mlkube-serving-bench-") as tmp:
        work = Path(tmp)
        write_peer_files(work, make_model(work))
        (work / "post.lua").write_text(WRK_SCRIPT)
        for round_number in range(1, options.rounds + 1):
            for peer in peers:
                print(f"round {round_number}, {peer.name} (load {load_average()}):", flush=True)
                try:
                    run = benchmark(
                        peer, work, options.duration, options.warmup, options.pin, concurrencies
                    )
                except (RuntimeError, subprocess.SubprocessError) as e:
                    print(f"  {peer.name} failed: {e}", flush=True)
                    log = (work / f"{peer.name}.log").read_text(errors="replace")
                    print(textwrap.indent(log[-3000:], "    "))
                    continue
                rounds[peer.name].append(run)
    print(f"load average after: {load_average()}")
    report([best_of(runs) for runs in rounds.values() if runs])
    return 0 if all(len(runs) == options.rounds for runs in rounds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
