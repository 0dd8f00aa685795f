"""A real Prometheus server for tests: start it on loopback, scrape some targets, query it.

Not a test module (no `test_` prefix): tests import it, e.g.

    from tests.prometheus_server import running_prometheus

    with running_prometheus(["127.0.0.1:8000"]) as prom:
        prom.wait_for('rvr_requests_total{route="chat"}', lambda r: len(r) == 1, timeout=20)

It runs the `prometheus` binary from PATH (Debian package `prometheus`, 2.42 in CI) and raises
`PrometheusUnavailable` when it is missing, so a test fails with a clear message instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

JOB_NAME = "targets"


class PrometheusUnavailable(RuntimeError):
    """The `prometheus` binary is not on PATH."""


class PrometheusError(RuntimeError):
    """Prometheus did not start, or a query failed. The message carries the server's log tail."""


def free_loopback_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago.

    Prometheus cannot be told to pick its own port and report it, so there is a small race between
    closing this socket and Prometheus binding it; on a test machine that is acceptable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrometheusHandle:
    """A running Prometheus: its base URL and a small client for the HTTP API."""

    url: str  # e.g. http://127.0.0.1:41234
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _get(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            # The API answers 400/422 with a JSON body that says what was wrong with the query.
            body = err.read().decode(errors="replace")
            raise PrometheusError(f"GET {path} {params} -> HTTP {err.code}: {body}") from err

    def query(self, promql: str, time_s: float | None = None) -> list[dict[str, Any]]:
        """Evaluate an instant query (/api/v1/query).

        Returns the result as a list of `{"metric": {...labels}, "value": [ts, "str"]}` dicts: the
        API's vector form; a scalar or string result is wrapped as one dict without labels so
        callers can treat every answer the same way.
        """
        params = {"query": promql}
        if time_s is not None:
            params["time"] = f"{time_s:.3f}"
        payload = self._get("/api/v1/query", params)
        if payload.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {payload}")
        data = payload["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (/api/v1/targets): handy when a wait_for times out."""
        return list(self._get("/api/v1/targets")["data"]["activeTargets"])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
        interval: float = 0.25,
    ) -> list[dict[str, Any]]:
        """Poll `promql` until `predicate(result)` holds; return that result.

        Raises TimeoutError with the last result, the scrape targets' health and the log tail, which
        is what one needs to tell "never scraped" from "scraped, but the value is wrong".
        """
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] | str = "no answer yet"
        while True:
            try:
                result = self.query(promql)
                if predicate(result):
                    return result
                last = result
            except PrometheusError as err:
                last = str(err)
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        try:
            targets = [
                {k: t.get(k) for k in ("scrapeUrl", "health", "lastError")} for t in self.targets()
            ]
        except (PrometheusError, OSError) as err:
            targets = [{"error": str(err)}]
        raise TimeoutError(
            f"{promql!r} did not satisfy the predicate within {timeout}s; last result: {last}; "
            f"targets: {targets}; prometheus log tail:\n{self.log_tail(2000)}"
        )


def _config(
    targets: Sequence[str], scrape_interval: str, rule_files: Sequence[Path]
) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": scrape_interval,
            # Rules (if any) are evaluated as often as targets are scraped, so a test never waits
            # a default minute for a recording rule.
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": JOB_NAME,
                "scrape_timeout": scrape_interval,  # must not exceed the interval
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


def _wait_ready(handle: PrometheusHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {handle.process.returncode} during start-up:\n"
                f"{handle.log_tail()}"
            )
        try:
            # 503 while the TSDB opens, 200 once queries and scrapes are served.
            with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise PrometheusError(f"prometheus not ready after {timeout}s:\n{handle.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: Prometheus closes its TSDB cleanly, usually within a second
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def running_prometheus(
    targets: list[str],
    scrape_interval: str = "1s",
    *,
    rule_files: Sequence[Path] = (),
    startup_timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> Iterator[PrometheusHandle]:
    """Run a real Prometheus scraping `targets` ("host:port", path /metrics) under job "targets".

    Writes a temp config and TSDB directory, listens on a free 127.0.0.1 port, waits for /-/ready,
    and on exit stops the process and removes the temp directory. `rule_files` lets a test load
    deploy/prometheus/alerts.yml against live data.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusUnavailable(
            "the `prometheus` binary is not on PATH; install it with "
            "`apt-get install -y --no-install-recommends prometheus` (Debian package, 2.42)"
        )
    with tempfile.TemporaryDirectory(prefix="rvr-prometheus-") as tmp:
        root = Path(tmp)
        config_path = root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(_config(targets, scrape_interval, rule_files)))
        log_path = root / "prometheus.log"
        port = free_loopback_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        handle = PrometheusHandle(
            url=f"http://127.0.0.1:{port}",
            process=process,
            log_path=log_path,
            config_path=config_path,
        )
        try:
            _wait_ready(handle, startup_timeout)
            yield handle
        finally:
            _stop(process)
