"""Child processes of the benchmarks: the proxy, upstreams and simulators.

Each runs in its own process group with its output in a log file, and is ready once a URL of it
answers 200. One implementation, so every benchmark starts and stops its children the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """`env` is laid over this process's environment; `drop` names variables the child must not see."""

    def __init__(self, name: str, command: list[str], workdir: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT, drop: Sequence[str] = ()) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - held open for the child's lifetime
        environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
        self.process = subprocess.Popen(command, cwd=cwd, env=environ, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stops the whole process group, so workers a child forked go with it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


C = TypeVar("C", bound=Child)


def start_proxy(workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None, workers: int = 1,
                log_level: str = "warning", child_type: type[C] = Child,  # type: ignore[assignment]
                ready_timeout: float = 120.0) -> tuple[C, str]:
    """`rvr-proxy serve` on a generated config; returns the child and its base URL (no /v1)."""
    path = workdir / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    command = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path), "--port", str(port),
               "--workers", str(workers), "--log-level", log_level]
    child = child_type("proxy", command, workdir,
                  env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        child.wait_ready(f"{base}/readyz", timeout=ready_timeout)
    except BaseException:
        child.stop()  # the caller never gets it, so nobody else would
        raise
    return child, base


def install_uvloop() -> None:
    """uvloop where installed: less CPU per request than asyncio's loop, in load generators and servers alike."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


def run_server(main: Coroutine[Any, Any, None]) -> None:
    """A benchmark server's entry point: uvloop where installed; Ctrl-C ends it quietly."""
    install_uvloop()
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
