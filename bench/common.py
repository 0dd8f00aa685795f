"""What the benchmarks share: paths, `--smoke`, child processes, the load generator, statistics
over repeats and Markdown tables. One implementation, so every benchmark starts, measures and
reports the same way.

The import convention of bench/: every runnable script puts the checkout's root first on
`sys.path`, then imports its siblings as `bench.NAME` and the project as `proxy` / `strategies`:

    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

    from bench.common import ROOT, start_proxy

So a script runs the same as `python bench/NAME.py` from any directory, as `python -m bench.NAME`,
and through `rvr-proxy bench` (which runs bench/real_model.py with `runpy`). Modules that are only
imported (this one, replay.py, real_tasks.py, audit_reward_models.py) need no such line. Nothing
in bench/ imports from tests/.

Child processes (the proxy, upstreams, simulators, Redis, HAProxy) each run in their own process
group with their output in a log file, and are ready once a URL of theirs answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"  # git-ignored: raw results, reports, pools
SMOKE_RESULTS = RESULTS / "smoke"  # where --smoke runs write, so they never overwrite a real run's files
# litellm fetches its model cost map over the network on import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# The client key of benchmarks whose proxy checks one. The proxy takes keys only as
# `os.environ/NAME` references (proxy/config/secrets.py): the config holds API_KEY_REF and the
# proxy's environment API_KEY_ENV=API_KEY (see `start_proxy(..., env=key_env())`).
API_KEY_ENV = "RVR_BENCH_KEY"
API_KEY_REF = f"os.environ/{API_KEY_ENV}"
API_KEY = "sk-bench-" + os.urandom(24).hex()  # strong: the LiteLLM proxy refuses weak master keys


def key_env() -> dict[str, str]:
    """The environment that makes API_KEY_REF resolve to API_KEY in a child proxy."""
    return {API_KEY_ENV: API_KEY}


# ---- runs -------------------------------------------------------------------------------------


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every bench script's `--help`: each option's default shown once.

    argparse's ArgumentDefaultsHelpFormatter appends "(default: X)" even where the help already
    names the default ("(default: all) (default: )"), shows "(default: None)" and "(default:
    False)", and says nothing for an option without help. Here a default is appended only where
    the help does not mention one and the value says something; checkout paths print relative to
    the checkout. Descriptions are printed as written (module docstrings).
    """

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and _meaningful_default(action):
            action = copy.copy(action)  # the parser's own action keeps its help
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not _meaningful_default(action):
            return text
        return f"{text} (default: %(default)s)"

    def _expand_help(self, action: argparse.Action) -> str:
        default = action.default
        shown = default
        if isinstance(default, (str, Path)) and Path(default).is_absolute() and Path(default).is_relative_to(ROOT):
            shown = str(Path(default).relative_to(ROOT))
        elif isinstance(default, (list, tuple)):  # as it is typed: comma-separated
            shown = ",".join(map(str, default))
        if shown is not default:
            action = copy.copy(action)
            action.default = shown
        return super()._expand_help(action)


def _meaningful_default(action: argparse.Action) -> bool:
    """Whether an option's default is worth printing: not a flag's, not absent or empty."""
    default = action.default
    if not action.option_strings or action.nargs == 0 or default is argparse.SUPPRESS:
        return False
    return default is not None and default != "" and default != []


def add_smoke(parser: argparse.ArgumentParser, what: str) -> None:
    """`--smoke`: a quick run through the whole path that still prints the benchmark's table.
    `what` says what the smoke run shrinks to; its numbers measure nothing."""
    parser.add_argument("--smoke", action="store_true",
                        help=f"a quick run that exercises the whole path and prints the table ({what}); "
                             "its numbers mean nothing")


def apply_smoke(args: argparse.Namespace, overrides: Mapping[str, Any]) -> argparse.Namespace:
    """With `--smoke`, set each `overrides` option on `args` (whatever was given for it). Output
    paths among them belong under SMOKE_RESULTS."""
    if getattr(args, "smoke", False):
        for name, value in overrides.items():
            if not hasattr(args, name):
                raise AttributeError(f"--smoke overrides unknown option {name!r}")
            setattr(args, name, value)
    return args


def results_dir(args: argparse.Namespace) -> Path:
    """bench/results/, or bench/results/smoke/ for a --smoke run."""
    return SMOKE_RESULTS if getattr(args, "smoke", False) else RESULTS


def stamped(name: str, args: argparse.Namespace, suffix: str = ".json") -> Path:
    """results_dir/NAME-YYYYmmdd-HHMMSS.SUFFIX: where a run keeps its raw results by default."""
    return results_dir(args) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"


def write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent))
    return path


# ---- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """`root` and every process below it (uvicorn workers, a model server's helpers) still alive."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


class Child:
    """A child process in its own process group, output in `workdir/NAME.log`.

    `env` is laid over this process's environment; `drop` names variables the child must not see."""

    def __init__(self, name: str, command: list[str], workdir: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT, drop: Sequence[str] = ()) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - held open for the child's lifetime
        environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in drop}
        self.process = subprocess.Popen(command, cwd=cwd, env=environ, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

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

    def cpu_seconds(self) -> float:
        """CPU of the process and all its descendants still alive: what a benchmark charges to it."""
        return sum(proc_cpu_seconds(pid) for pid in descendants(self.process.pid))

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


def start_proxy(workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None, workers: int = 1,
                log_level: str = "warning", ready_timeout: float = 120.0) -> tuple[Child, str]:
    """`rvr-proxy serve` on a generated config; returns the child and its base URL (no /v1).

    Secrets in `config` must be `os.environ/NAME` references (the proxy refuses plain text);
    pass their values in `env`."""
    path = workdir / "proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    command = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path), "--port", str(port),
               "--workers", str(workers), "--log-level", log_level]
    child = Child("proxy", command, workdir,
                  env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        child.wait_ready(f"{base}/readyz", timeout=ready_timeout)
    except BaseException:
        child.stop()  # the caller never gets it, so nobody else would
        raise
    return child, base


def start_server_script(name: str, script: str, args: Sequence[str], workdir: Path, ready_path: str = "/v1/models",
                        timeout: float = 30.0) -> tuple[Child, str]:
    """One of bench/'s servers (fast_upstream.py, fault_upstream.py, sim_upstream.py) on a free
    loopback port, as its own process; returns the child and its base URL (no /v1)."""
    port = free_port()
    child = Child(name, [sys.executable, str(ROOT / "bench" / script), "--port", str(port), *args], workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        child.wait_ready(f"{base}{ready_path}", timeout)
    except BaseException:
        child.stop()
        raise
    return child, base


def start_fast_upstream(workdir: Path) -> tuple[Child, str]:
    """bench/fast_upstream.py: returns the child and its API base (with /v1)."""
    child, base = start_server_script("upstream", "fast_upstream.py", [], workdir)
    return child, f"{base}/v1"


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


# ---- the embedded model from outside ----------------------------------------------------------

# A prompt the model continues for as long as it is allowed: its end-of-text and end-of-turn
# tokens are banned, so only max_tokens (or a hang-up) ends the generation.
ENDLESS = {"prompt": "Once upon a time", "temperature": 0, "logit_bias": {"1": -100, "106": -100}}


async def wait_generating(pid: int, since: float, timeout: float = 120.0) -> None:
    """Return once the model server `pid` has used a second of CPU since `since`: it is generating
    (idle, it uses next to none; a short prompt is read in a fraction of that)."""
    deadline = time.monotonic() + timeout
    while proc_cpu_seconds(pid) - since < 1.0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the model server (pid {pid}) never started generating")
        await asyncio.sleep(0.05)


# ---- load -------------------------------------------------------------------------------------

REQUEST_TIMEOUT_S = 30.0


class LoadClient:
    """One shared HTTP client for every request of a measurement: aiohttp (default) or httpx.

    httpx's AsyncClient is the natural choice but cannot drive 64 concurrent requests here: against
    the bare upstream it falls from ~1200 req/s at c=1 to ~250 req/s at c=64 (~110 ms median, pool
    contention in httpcore), so the load generator, not the proxy, would set the c=64 numbers.
    aiohttp does ~4000+ req/s at c=64 on the same upstream."""

    def __init__(self, kind: str, connections: int, api_key: str | None = API_KEY,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.kind = kind
        self.connections = connections
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self._session: Any = None

    async def __aenter__(self) -> LoadClient:
        if self.kind == "httpx":
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self._session = httpx.AsyncClient(limits=limits, timeout=self.timeout_s, headers=self.headers)
        else:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, limit_per_host=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s), headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "httpx":
            await self._session.aclose()
        else:
            await self._session.close()

    async def post(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.kind == "httpx":
            response = await self._session.post(url, json=body)
            return response.status_code, response.content
        async with self._session.post(url, json=body) as response:
            return response.status, await response.read()


async def drive(client: LoadClient, url: str, body: dict[str, Any], concurrency: int, total: int,
                deadline_s: float) -> tuple[list[float], list[str], int, float]:
    """`total` chat requests, `concurrency` at a time; stops issuing new ones after `deadline_s`.
    Returns the latencies (s) of the answers with choices, error descriptions, requests never
    sent, and the wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    started = time.perf_counter()
    stop_at = started + deadline_s

    async def worker() -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < stop_at:
            issued += 1
            t0 = time.perf_counter()
            try:
                status, content = await client.post(url, body)
                elapsed = time.perf_counter() - t0
                if status != 200:
                    errors.append(f"HTTP {status}: {content[:200]!r}")
                elif not json.loads(content).get("choices"):
                    errors.append(f"no choices: {content[:200]!r}")
                else:
                    latencies.append(elapsed)
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, total - issued, time.perf_counter() - started


# ---- statistics over repeats ------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median; NaN for no values (a measurement that produced none)."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile, `q` in 0..100; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) / 100)))
    return ordered[rank - 1]


def spread(values: Sequence[float], spec: str = ".1f") -> str:
    """`median (min–max)` of repeats, each formatted with `spec`."""
    if not values:
        return "–"
    return f"{format(median(values), spec)} ({format(min(values), spec)}–{format(max(values), spec)})"


def per_round(values: Iterable[float], spec: str) -> str:
    """Each round's value, in round order: what a median over rounds hides."""
    return ", ".join(format(v, spec) for v in values)


# ---- reports ----------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table. `align` has one letter per column: `l` (default) or `r` (numbers)."""
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError("one alignment letter per column")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: the machine's other work moves every number."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
