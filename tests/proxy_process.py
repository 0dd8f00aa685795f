"""Starts the real proxy (`rvr-proxy serve`) under uvicorn on a loopback port, as users run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
# `RVR_TEST_UPSTREAM_CLIENT=litellm pytest ...` runs a suite's proxies with every upstream on
# litellm (`client: litellm`) instead of the default (`auto`: the native client for the stubs), so
# both clients pass the same tests.
CLIENT_ENV = "RVR_TEST_UPSTREAM_CLIENT"


def with_client(config: dict[str, Any], client: str) -> dict[str, Any]:
    """`config` with `client` set on every upstream that does not choose one itself."""
    upstreams = [{"client": client, **upstream} for upstream in config.get("upstreams") or []]
    return {**config, "upstreams": upstreams}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    def __init__(
        self,
        config: dict[str, Any] | None,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rvr-test-")
        self.config_path = Path(self._dir.name) / "config.yaml"
        self.log_path = Path(self._dir.name) / "proxy.log"
        command = [sys.executable, "-m", "proxy.cli", "serve", "--port", str(self.port), "--workers", str(workers)]
        if config is not None and os.environ.get(CLIENT_ENV):
            config = with_client(config, os.environ[CLIENT_ENV])
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(config))
            command += ["--config", str(self.config_path)]
        self.command = command + (args or [])
        self.env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", **(env or {})}
        if config is None:  # only what the test passes may configure it, not the caller's environment
            for name in ("RVR_CONFIG", "RVR_UPSTREAM_API_BASE", "RVR_UPSTREAM_MODEL"):
                if name not in (env or {}):
                    self.env.pop(name, None)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ProxyProcess:
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"proxy did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()
