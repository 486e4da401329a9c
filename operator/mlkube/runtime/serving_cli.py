"""``mlkube-runtime serve``: run the model server (``mlkube.runtime.serve:MLKubeModelServer``).

This is the programmatic equivalent of ``bentoml serve mlkube.runtime.serve:MLKubeModelServer``
with one worker, minus the circus supervisor process: the pod's kubelet already restarts a dead
server, and without the supervisor a model that fails to load (a digest mismatch, say) ends the
process with a non-zero status and its error in the pod's log, instead of a supervisor that keeps
respawning the worker behind a port that never answers. One process also saves its memory and
about a second of start-up.

Environment variables are the interface (see ``mlkube.runtime.serve``). ``--spec FILE`` is a YAML
file giving defaults for them: ``MLKUBE_*`` keys, a container-style ``env`` list of
``{name, value}``, and ``port``, at the top level or under ``spec`` (so a Deployment object
works); variables already set in the environment win.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 3000
ENV_PREFIX = "MLKUBE_"


class SpecError(Exception):
    """The --spec file cannot be read as serving settings."""


def spec_settings(document: Any) -> tuple[dict[str, str], int | None]:
    """The environment defaults and the port a spec document gives."""
    if not isinstance(document, Mapping):
        raise SpecError("the spec must be a YAML mapping")
    spec = document.get("spec", document)
    if not isinstance(spec, Mapping):
        raise SpecError("spec: must be a mapping")
    env = {str(k): str(v) for k, v in spec.items() if str(k).startswith(ENV_PREFIX)}
    for item in spec.get("env") or []:
        if not isinstance(item, Mapping) or "name" not in item:
            raise SpecError(f"env: {item!r} must be a mapping with a name and a value")
        env[str(item["name"])] = str(item.get("value", ""))
    port = spec.get("port")
    if port is not None and not isinstance(port, int):
        raise SpecError(f"port: {port!r} must be an integer")
    return env, port


def prepare_environment(environ: MutableMapping[str, str]) -> None:
    """What BentoML needs before it is imported.

    Usage tracking off (only the string ``true`` works), a writable ``BENTOML_HOME`` (the image's
    root file system is read-only), and the Prometheus multiprocess directory that BentoML's
    ``/metrics`` reads, which ``bentoml serve`` would otherwise create.
    """
    environ["BENTOML_DO_NOT_TRACK"] = "true"
    if not environ.get("BENTOML_HOME"):
        environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bentoml-home-")
    if not environ.get("PROMETHEUS_MULTIPROC_DIR"):
        environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def run_server(sock: socket.socket) -> int:
    """Serve the BentoML service on a bound socket until stopped; 1 if it failed to start.

    The same steps as BentoML's worker process (``_bentoml_impl.worker.service``), which
    ``bentoml serve`` runs under circus. Imports are deferred until ``prepare_environment`` ran:
    prometheus_client picks its multiprocess mode when it is first imported.
    """
    import uvicorn
    from bentoml._internal.context import server_context
    from bentoml._internal.log import configure_server_logging

    from mlkube.runtime.serve import MLKubeModelServer

    service: Any = MLKubeModelServer  # a bentoml.Service once decorated; mypy sees the class
    configure_server_logging()  # type: ignore[no-untyped-call]
    # BentoML's logging config disables the loggers that exist already and shows WARNING and up
    logging.getLogger("mlkube").setLevel(logging.INFO)
    for name, existing in logging.root.manager.loggerDict.items():
        if name.startswith("mlkube.") and isinstance(existing, logging.Logger):
            existing.disabled = False
    server_context.service_type = "entry_service"
    server_context.service_name = service.name
    server_context.bento_name = service.name
    server_context.bento_version = "not available"
    server_context.worker_index = 1
    config = uvicorn.Config(
        app=service.to_asgi(is_main=True),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def serve_main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mlkube-runtime serve",
        description="Serve the model version named by MLKUBE_MODEL_URI with BentoML.",
    )
    parser.add_argument("--spec", type=Path, help="YAML file with MLKUBE_* defaults and port")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, help=f"default: the spec's port, else {DEFAULT_PORT}")
    options = parser.parse_args(args)
    spec_port: int | None = None
    if options.spec is not None:
        try:
            env, spec_port = spec_settings(yaml.safe_load(options.spec.read_text()))
        except (OSError, yaml.YAMLError, SpecError) as e:
            print(f"mlkube-runtime serve: --spec {options.spec}: {e}", file=sys.stderr)
            return 2
        for name, value in env.items():
            os.environ.setdefault(name, value)
    prepare_environment(os.environ)
    port = options.port if options.port is not None else spec_port or DEFAULT_PORT
    try:
        sock = bind(options.host, port)
    except OSError as e:
        print(f"mlkube-runtime serve: cannot listen on {options.host}:{port}: {e}", file=sys.stderr)
        return 1
    with sock:
        return run_server(sock)


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
