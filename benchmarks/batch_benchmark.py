"""BatchPrediction throughput: rows per second per core over 10M rows x 20 feature columns,
against the floor of a plain pyarrow read + model.predict + Parquet write in one process on the
same data; peak memory per shard; the speed-up at parallelism 1, 2 and 4 (issue 17 item 7).

Data, generated once (cached under ~/.cache/mlkube/bench/batch, or --dir): 10 Parquet files of
1,000,000 rows (pyarrow's default row groups: one 1M-row group per file), an int64 ``id`` and 20
float64 features; and a model version trained by mlkube's own trainer (``runtime.train``:
LogisticRegression behind the default preprocessing, a scikit-learn Pipeline fitted on a
DataFrame) on a 20,000-row sample of the same distribution.

Each measurement runs in a fresh process tree with BLAS, OpenMP and Arrow held to one thread, so
one process is one core; times are wall seconds, imports excluded on both sides (a pod's start
is Kubernetes' business):

- ``floor``: one process; per file ``pq.read_table`` -> ``to_pandas`` (the Pipeline selects its
  columns by name) -> ``model.predict`` -> ``pq.write_table`` of id + prediction.
- ``mlkube p=N``: the plan, the 10 shards of 1M rows each scored by ``score_shard`` (what
  ``mlkube-runtime batch shard`` runs in a shard's pod: the artifact's digest verified, every
  row checked against the input schema, batches of 65,536 rows, id + prediction + both
  probabilities written) in N worker processes, and the manifest. Each shard's peak RSS is the
  worker's VmHWM, reset before the shard (/proc/self/clear_refs).

Rows/s per core divides by min(N, cores). Figures are printed, never asserted::

    flock /tmp/mlkube-bench.lock .venv/bin/python benchmarks/batch_benchmark.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROWS = 10_000_000
FILES = 10
FEATURES = [f"f{i:02d}" for i in range(20)]
TRAIN_ROWS = 20_000
SHARD_ROWS = 1_000_000
PARALLELISM = (1, 2, 4)
MEMORY_CASES = ((250_000, 65_536), (1_000_000, 65_536), (1_000_000, 16_384), (1_000_000, 262_144))
"""(rowsPerShard, batchSize): the peak follows the batch, not the shard."""
TARGET = 0.8
LAYOUT = "1"
"""Bumped when the generated data changes, so a stale cache is rebuilt."""
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ARROW_IO_THREADS": "1",
}


def cores() -> int:
    return len(os.sched_getaffinity(0))


# -- data -----------------------------------------------------------------------------------------


def generate(folder: Path, rows: int) -> None:
    """The input files and a trained model version, unless a cache of the same layout is there."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlkube.api.trainingjob import TrainingJobSpec
    from mlkube.runtime.train import TrainRequest, train

    marker = folder / "layout"
    if marker.exists() and marker.read_text() == f"{LAYOUT}/{rows}":
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "input").mkdir(parents=True)
    rng = np.random.default_rng(17)
    weights = rng.normal(size=len(FEATURES))
    per_file = rows // FILES
    for index in range(FILES):
        x = rng.normal(size=(per_file, len(FEATURES)))
        columns = {"id": pa.array(np.arange(index * per_file, (index + 1) * per_file))}
        columns |= {name: pa.array(x[:, i]) for i, name in enumerate(FEATURES)}
        pq.write_table(pa.table(columns), folder / "input" / f"part-{index:02d}.parquet")
        print(f"  wrote input file {index + 1}/{FILES}", file=sys.stderr)
    x = rng.normal(size=(TRAIN_ROWS, len(FEATURES)))
    sample = pd.DataFrame(x, columns=FEATURES)
    sample["target"] = (x @ weights + rng.normal(size=TRAIN_ROWS) > 0).astype(int)
    sample.to_parquet(folder / "train.parquet")
    spec = TrainingJobSpec.model_validate(
        {
            "model": "bench",
            "dataset": {"uri": f"file://{folder}/train.parquet"},
            "estimator": {"className": "sklearn.linear_model.LogisticRegression"},
        }
    )
    train(TrainRequest(spec, f"file://{folder}/store", "bench", 1))
    marker.write_text(f"{LAYOUT}/{rows}")


def model_dir(folder: Path) -> Path:
    return folder / "store/bench/bench/1"


# -- measurements, each in its own process ---------------------------------------------------------


def _one_thread() -> None:
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)


def measure_floor(folder: Path) -> dict[str, Any]:
    """The least work: read, predict, write, one process, one file at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlkube.runtime import artifacts

    _one_thread()
    model: Any = artifacts.load_verified_model(str(model_dir(folder)))
    out = folder / f"floor-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    rows = 0
    started, cpu = time.perf_counter(), _cpu_seconds()
    for path in sorted((folder / "input").glob("*.parquet")):
        table = pq.read_table(path)
        predictions = model.predict(table.select(FEATURES).to_pandas())
        pq.write_table(
            pa.table({"id": table.column("id"), "prediction": predictions}), out / path.name
        )
        rows += table.num_rows
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    shutil.rmtree(out)
    return {"rows": rows, "seconds": seconds, "cpuSeconds": cpu}


def _worker_ready() -> int:
    _one_thread()
    import mlkube.runtime.batch  # noqa: F401 - a pod imports it before its shard

    return os.getpid()


def _cpu_seconds() -> float:
    """This process's user and system CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _shard(spec: Any, run_id: str, shard: int, scoring: Any) -> dict[str, Any]:
    from mlkube.runtime.batch import score_shard

    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS counts from here
    cpu = _cpu_seconds()
    result = score_shard(spec, run_id, shard, scoring)
    return {**result, "peakRssKiB": _peak_rss_kib(), "cpuSeconds": _cpu_seconds() - cpu}


def measure_mlkube(folder: Path, parallelism: int) -> dict[str, Any]:
    """Plan, shards in `parallelism` worker processes, manifest: wall time and each shard's peak."""
    from mlkube.api.batchprediction import BatchPredictionSpec
    from mlkube.runtime import artifacts
    from mlkube.runtime.batch import Scoring, plan, write_manifest

    _one_thread()
    out = folder / f"out-{uuid.uuid4().hex[:6]}"
    spec = BatchPredictionSpec.model_validate(
        {
            "modelVersion": "bench-v1",
            "input": {"uri": f"file://{folder}/input/"},
            "output": {"uri": f"file://{out}/", "idColumn": "id"},
            "rowsPerShard": SHARD_ROWS,
            "parallelism": parallelism,
        }
    )
    digest = artifacts.read_bytes(str(model_dir(folder) / artifacts.DIGEST_FILE)).decode().strip()
    scoring = Scoring("bench-v1", str(model_dir(folder)), digest)
    with ProcessPoolExecutor(parallelism, mp_context=get_context("spawn")) as pool:
        # every worker started and imported before the clock starts
        pids: set[int] = set()
        while len(pids) < parallelism:
            pids |= set(pool.map(_worker_sleeping_ready, range(parallelism)))
        started, cpu = time.perf_counter(), _cpu_seconds()
        planned = plan(spec, "bench")
        futures = [pool.submit(_shard, spec, "bench", i, scoring) for i in range(planned["shards"])]
        shards = [f.result() for f in futures]
        written = write_manifest(spec, "bench", "bench-v1", digest)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    shutil.rmtree(out)
    return {
        "rows": written["rowsOut"],
        "seconds": seconds,
        "failed": written["failed"],
        "peakRssMiB": [s["peakRssKiB"] / 1024 for s in shards],
        "cpuSeconds": cpu + sum(s["cpuSeconds"] for s in shards),
    }


def measure_memory(folder: Path, rows: int, batch_size: int) -> dict[str, Any]:
    """One shard of `rows` rows read `batch_size` at a time, alone in this process: its peak
    RSS, and what the interpreter and the imports held before it."""
    from mlkube.api.batchprediction import BatchPredictionSpec
    from mlkube.runtime.batch import Scoring, plan, score_shard

    _one_thread()
    before = _peak_rss_kib()
    out = folder / f"memory-{uuid.uuid4().hex[:6]}"
    spec = BatchPredictionSpec.model_validate(
        {
            "modelVersion": "bench-v1",
            "input": {"uri": f"file://{folder}/input/part-00.parquet"},
            "output": {"uri": f"file://{out}/", "idColumn": "id"},
            "rowsPerShard": rows,
            "batchSize": batch_size,
        }
    )
    plan(spec, "bench")
    Path("/proc/self/clear_refs").write_text("5")
    score_shard(spec, "bench", 0, Scoring("bench-v1", str(model_dir(folder))))
    shutil.rmtree(out)
    return {"importsMiB": before / 1024, "peakMiB": _peak_rss_kib() / 1024}


def _worker_sleeping_ready(_: int) -> int:
    """A worker's pid once ready; it waits a little, so every worker takes one of these."""
    pid = _worker_ready()
    time.sleep(0.2)
    return pid


def child(kind: str, folder: Path, parallelism: int, *extra: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter, one thread per process."""
    command = [sys.executable, __file__, "--dir", str(folder), "--measure", kind]
    done = subprocess.run(
        [*command, "-p", str(parallelism), *extra],
        env={**os.environ, **ONE_THREAD},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} p={parallelism} failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(folder: Path, rows: int, repeat: int) -> None:
    n = cores()
    print(f"BatchPrediction benchmark: {rows:,} rows x {len(FEATURES)} float features (+ id) in "
          f"{FILES} Parquet files, shards of {SHARD_ROWS:,} rows; {n} cores; best of {repeat}; "
          f"load average {os.getloadavg()[0]:.1f} at the start (the test cluster shares the "
          "cores)")  # fmt: skip
    floor = min((child("floor", folder, 1) for _ in range(repeat)), key=lambda r: r["seconds"])
    floor_rate = floor["rows"] / floor["seconds"]
    floor_cpu = floor["rows"] / floor["cpuSeconds"]
    print(f"floor  (pyarrow read + model.predict + Parquet write, 1 process): "
          f"{floor['seconds']:6.2f} s  {floor_rate:12,.0f} rows/s/core  "
          f"{floor_cpu:12,.0f} rows per CPU-second")  # fmt: skip
    first: float | None = None
    for p in PARALLELISM:
        best = min((child("mlkube", folder, p) for _ in range(repeat)), key=lambda r: r["seconds"])
        rate = best["rows"] / best["seconds"]
        per_core = rate / min(p, n)
        per_cpu = best["rows"] / best["cpuSeconds"]
        first = first or rate
        peaks = best["peakRssMiB"]
        print(
            f"mlkube p={p}: {best['seconds']:6.2f} s  {rate:12,.0f} rows/s  "
            f"{per_core:12,.0f} rows/s/core  x{per_core / floor_rate:.2f} of the floor per core "
            f"(target >= {TARGET})  {per_cpu:12,.0f} rows per CPU-second "
            f"(x{per_cpu / floor_cpu:.2f})  speed-up x{rate / first:.2f} over p=1  "
            f"peak RSS per shard {min(peaks):.0f}-{max(peaks):.0f} MiB "
            f"(median {statistics.median(peaks):.0f})"
            + (f"  FAILED SHARDS {best['failed']}" if best["failed"] else "")
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print("peak RSS of one shard alone, by its rows and batchSize (what the imports hold first):")
    for shard_rows, batch_size in MEMORY_CASES:
        memory = child("memory", folder, 1, "--rows", str(shard_rows), "--batch", str(batch_size))
        print(f"  rowsPerShard {shard_rows:>9,}  batchSize {batch_size:>7,}: "
              f"{memory['peakMiB']:5.0f} MiB (imports {memory['importsMiB']:.0f} MiB)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache/mlkube/bench/batch")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--measure", choices=("floor", "mlkube", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("-p", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=65_536, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure == "floor":
        print(json.dumps(measure_floor(args.dir)))
    elif args.measure == "mlkube":
        print(json.dumps(measure_mlkube(args.dir, args.p)))
    elif args.measure == "memory":
        print(json.dumps(measure_memory(args.dir, args.rows, args.batch)))
    else:
        generate(args.dir, args.rows)
        report(args.dir, args.rows, args.repeat)


if __name__ == "__main__":
    main()
