"""Drive the ML loop end to end with the real runtime commands (see hack/demo-local)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml
from sklearn.datasets import load_iris

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".work" / "demo"
RUNTIME = str(Path(sys.executable).with_name("mlkube-runtime"))


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str) -> dict[str, object]:
    out = subprocess.run([RUNTIME, *args], check=True, capture_output=True, text=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def serve(model: dict[str, object], log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "MLKUBE_MODEL_URI": str(model["artifactUri"]),
        "MLKUBE_MODEL_SHA256": str(model["sha256"]),
        "MLKUBE_MODEL_VERSION": f"iris-v{model['version']}",
        "MLKUBE_INFERENCE_LOG_URI": f"file://{log_dir}",
    }
    server = subprocess.Popen(
        [RUNTIME, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit("the server exited during start-up")
        time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not become ready in 120 s")


def predict(url: str, rows: list[dict[str, float]]) -> tuple[list[object], list[str]]:
    """The predictions and each row's request id."""
    predictions: list[object] = []
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=10) as http:
        for start in range(0, len(rows), 10):
            answer = http.post("/predict", json={"instances": rows[start : start + 10]})
            answer.raise_for_status()
            predictions += answer.json()["predictions"]
            ids += answer.json()["requestIds"]
    return predictions, ids


def send_labels(url: str, ids: list[str], labels: list[int]) -> None:
    """The ground truth for answered rows, as a warehouse job would post it later."""
    items = [{"requestId": i, "label": label} for i, label in zip(ids, labels, strict=True)]
    httpx.post(f"{url}/feedback", json={"feedback": items}, timeout=10).raise_for_status()


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    step("train: TrainingJob examples/trainingjob.yaml on builtin:iris")
    model = run(
        "train",
        "--spec",
        str(ROOT / "examples/trainingjob.yaml"),
        "--artifact-root",
        str(WORK / "store"),
    )
    print(json.dumps({k: model[k] for k in ("model", "version", "metrics", "sha256")}, indent=2))

    iris = load_iris(as_frame=True).frame
    iris.columns = [
        "sepal_length_cm",
        "sepal_width_cm",
        "petal_length_cm",
        "petal_width_cm",
        "target",
    ]
    rows = iris.drop(columns="target").sample(n=300, replace=True, random_state=1)
    shifted = rows.assign(
        petal_length_cm=rows.petal_length_cm + 2.0, petal_width_cm=rows.petal_width_cm + 1.0
    )
    monitor = yaml.safe_load((ROOT / "examples/driftmonitor.yaml").read_text())
    monitor["spec"].update({"window": {"rows": 300}, "minRows": 100})
    (WORK / "monitor.yaml").write_text(yaml.safe_dump(monitor))
    reference = str(model["artifactUri"]) + "/reference.parquet"

    for label, inputs in (("unchanged inputs", rows), ("shifted petal measurements", shifted)):
        log_dir = WORK / f"log-{label.split()[0]}"
        step(f"serve with BentoML and predict 300 rows of {label}")
        server, url = serve(model, log_dir)
        try:
            predictions, ids = predict(url, inputs.to_dict(orient="records"))
            counts = dict(sorted(Counter(map(str, predictions)).items()))
            print(f"{len(predictions)} predictions from {url}: {counts}")
            send_labels(url, ids, iris.target.loc[inputs.index].tolist())
            print(f"posted the true labels of all {len(ids)} rows to {url}/feedback")
            metrics = httpx.get(f"{url}/metrics").text
            print(
                next(
                    line
                    for line in metrics.splitlines()
                    if line.startswith("mlkube_requests_total")
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        step(f"drift and live-quality check on the logged {label}")
        report = run(
            "drift",
            "--spec",
            str(WORK / "monitor.yaml"),
            "--reference",
            reference,
            "--log",
            f"file://{log_dir}",
            "--model-version",
            f"iris-v{model['version']}",
            "--model-uri",
            str(model["artifactUri"]),
        )
        print(json.dumps(report, indent=2))
    print(
        "\nThe loop ran: trained, served, predicted, took the ground truth and checked drift and "
        "live quality on real components (shifted inputs: the labels show the damage that the "
        "estimate from probabilities cannot see)."
    )


if __name__ == "__main__":
    main()
