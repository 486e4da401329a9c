"""A real model server process for runtime tests: started on a free port, its output in a file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

STARTUP_SECONDS = 90.0


@dataclass
class ServerProcess:
    """A server subprocess with its output in a file (a pipe could fill up and block it)."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"server not ready after {STARTUP_SECONDS} s:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown, as the kubelet does), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(command: list[str], env: dict[str, str], log_path: Path) -> ServerProcess:
    port = free_port()
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "BENTOML_HOME": str(log_path.parent / "bentoml-home"), **env},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches every child
    )
    return ServerProcess(process, port, log_path, log_file)


SERVE_COMMAND = [sys.executable, "-m", "mlkube.runtime.cli", "serve"]  # `mlkube-runtime serve`
