"""N proxy instances behave as one: a real redis-server and a real HAProxy on loopback in front
of two proxy instances with two workers each (Debian's `redis-server` and `haproxy`, installed by
scripts/setup-test-env.sh; a missing binary fails, never skips).

- per-key limits hold across instances: the request past the limit gets 429 on either one;
- running risk estimates and the learned `n` memo from one instance are used by the other;
- `kill -TERM` of one instance under load, and Redis killed under load: no client request fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config.settings import ConfigError, parse_config
from tests.conftest import UPSTREAM_KEY, upstream
from tests.proxy_process import ProxyProcess, free_port
from tests.stub_upstream import StubServer

KEYS = {
    "KEY_LIMITED": "sk-scale-limited-0123456789",
    "KEY_TOKENS": "sk-scale-tokens-0123456789",
    "KEY_LOAD": "sk-scale-load-0123456789",
}
PREFIX = "rvrtest"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not on PATH: `apt-get install -y --no-install-recommends redis-server haproxy`")
    return path


class RedisServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [need("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self.command("PING") is True, "redis-server did not start")
        return self

    def command(self, *args: str) -> Any:
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, decode_responses=True) as client:
                return client.execute_command(*args)
        except redis.RedisError:
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class HAProxy:
    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rvr-haproxy-")
        config = Path(self._dir.name) / "haproxy.cfg"
        servers = "\n".join(f"  server p{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        # What a production config would say: health checks on /readyz (a slow answer from a busy
        # instance is not a dead one: `timeout check`), and a request whose connection was refused
        # or closed before any answer is sent again, to the other server.
        config.write_text(f"""
global
  maxconn 1024
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout check 2s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout
frontend front
  bind 127.0.0.1:{self.port}
  default_backend proxies
backend proxies
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 300ms fall 1 rise 1
{servers}
""")
        self.process = subprocess.Popen(
            [need("haproxy"), "-f", str(config), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._up, "haproxy did not start")

    def _up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._dir.cleanup()


def wait_until(check: Callable[[], bool], message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(message)


def cluster_config(api_base: str) -> dict[str, Any]:
    ups = [upstream(n, api_base, retries=0) for n in ("echo", "math", "slow")]
    ups.append({**upstream("one", api_base, retries=0), "name": "one-memo"})  # ignores `n`
    best = {"name": "best_of_n", "max_n": 8, "adaptive": False}
    return {
        "server": {
            "keys": [
                {"key": "os.environ/KEY_LIMITED", "name": "team-limited", "rpm": 3},
                {"key": "os.environ/KEY_TOKENS", "name": "team-tokens", "tpm": 2},
                {"key": "os.environ/KEY_LOAD", "name": "team-load", "rpm": 100_000, "tpm": 10**9},
            ],
            "state": {"backend": "redis", "url": "os.environ/REDIS_URL", "prefix": PREFIX},
            "drain_s": 10,
            "drain_delay_s": 3,  # > check interval + check timeout: HAProxy marks the instance down first
        },
        "upstreams": ups,
        "routes": [
            {"model": "echo", "upstream": "echo"},
            {"model": "slow", "upstream": "slow"},
            {"model": "one-memo", "upstream": "one-memo"},
            {"model": "math-learn", "upstream": "math", "strategy": best},
            {"model": "math-load", "upstream": "math", "strategy": {**best, "max_n": 4}},
        ],
    }


class Cluster:
    def __init__(self, stub: StubServer, redis: RedisServer) -> None:
        self.stub = stub
        self.redis = redis
        env = {"UPSTREAM_KEY": UPSTREAM_KEY, "REDIS_URL": redis.url, **KEYS}
        config = cluster_config(stub.api_base)
        self.instances = [ProxyProcess(config, workers=2, env=env) for _ in range(2)]
        starting = [threading.Thread(target=p.start) for p in self.instances]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        for p in self.instances:
            assert p.process is not None and p.process.poll() is None, p.log()
        self.balancer = HAProxy([p.port for p in self.instances])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.balancer.port}/v1"

    def client(self, key: str, base_url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=base_url or self.url, api_key=KEYS[key], max_retries=0, timeout=30)

    def stop(self) -> None:
        self.balancer.stop()
        for p in self.instances:
            p.__exit__()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    need("haproxy")
    redis = RedisServer().start()
    with StubServer(slow_s=0.4) as stub:
        cluster = Cluster(stub, redis)
        try:
            yield cluster
        finally:
            cluster.stop()
            redis.kill()


def metric(instance: ProxyProcess, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{instance.base_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def backend_up(instance: ProxyProcess) -> bool:
    return metric(instance, "rvr_state_backend_up") == 1.0


def fresh_minute() -> None:
    """Limits count per clock minute: start a burst early in one, so it cannot straddle two."""
    second = time.time() % 60
    if second > 50:
        time.sleep(60.5 - second)


def ask(client: openai.OpenAI, model: str = "echo", **extra: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], **extra)


# --- limits ----------------------------------------------------------------------------------------


def test_rpm_limit_holds_across_instances(cluster: Cluster) -> None:
    a, b = (cluster.client("KEY_LIMITED", f"{p.base_url}/v1") for p in cluster.instances)
    fresh_minute()
    for client in (a, b, a):  # rpm: 3, spread over both instances
        ask(client)
    for client in (b, a):  # the 4th and 5th, whichever instance gets them
        with pytest.raises(openai.RateLimitError) as refused:
            ask(client)
        response = refused.value.response
        assert 1 <= int(response.headers["retry-after"]) <= 60
        error = response.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert "team-limited" in error["message"] and KEYS["KEY_LIMITED"] not in error["message"]
    # Labelled by key name; the key itself is in no metric and no Redis key.
    counts = [metric(p, "rvr_key_requests_total", key_name="team-limited", status="429") for p in cluster.instances]
    assert sum(c or 0 for c in counts) == 2
    for p in cluster.instances:
        assert KEYS["KEY_LIMITED"] not in httpx.get(f"{p.base_url}/metrics").text
    redis_keys = cluster.redis.command("KEYS", "*")
    assert redis_keys and not any(key in k for k in redis_keys for key in KEYS.values())


def test_token_limit_is_charged_after_and_refuses_the_next_request(cluster: Cluster) -> None:
    a, b = (cluster.client("KEY_TOKENS", f"{p.base_url}/v1") for p in cluster.instances)
    fresh_minute()
    first = ask(a)  # tpm: 2, unknown until the answer: this one goes through and overshoots
    assert first.usage is not None and first.usage.total_tokens > 2
    with pytest.raises(openai.RateLimitError) as refused:
        ask(b)
    assert refused.value.response.json()["error"]["type"] == "tokens"
    charged = [metric(p, "rvr_key_tokens_total", key_name="team-tokens") for p in cluster.instances]
    assert sum(c or 0 for c in charged) == first.usage.total_tokens


# --- shared learning -------------------------------------------------------------------------------


def test_running_estimates_learned_on_one_instance_are_used_by_the_other(cluster: Cluster) -> None:
    a, b = (cluster.client("KEY_LOAD", f"{p.base_url}/v1") for p in cluster.instances)
    measured = []
    for _ in range(3):  # 8 candidates each: every request measures its candidate term
        risk = ask(a, "math-learn", n=1).model_extra["rvr"]["risk"]
        assert risk["sources"]["candidate"] == "request"
        measured.append(risk["candidate"])
    for _ in range(4):  # 2 candidates cannot measure it; B has never measured it itself
        risk = ask(b, "math-learn", extra_body={"rvr": {"max_n": 2}}).model_extra["rvr"]["risk"]
        assert risk["sources"]["candidate"] == "route"
        assert risk["candidate"] == pytest.approx(sum(measured) / len(measured))


def test_n_memo_learned_on_one_instance_is_used_by_the_other(cluster: Cluster) -> None:
    a, b = (cluster.client("KEY_LOAD", f"{p.base_url}/v1") for p in cluster.instances)
    assert len(ask(a, "one-memo", n=3).choices) == 3  # asked with n=3, got 1: learned, filled in
    sent = len(cluster.stub.state.bodies("one"))
    assert [body.get("n") for body in cluster.stub.state.bodies("one")].count(3) == 1
    for _ in range(4):  # new connections: both of B's workers
        with httpx.Client() as fresh:
            client = openai.OpenAI(
                base_url=f"{cluster.instances[1].base_url}/v1", api_key=KEYS["KEY_LOAD"], max_retries=0,
                http_client=fresh,
            )
            assert len(ask(client, "one-memo", n=3).choices) == 3
    later = cluster.stub.state.bodies("one")[sent:]
    assert len(later) == 12 and all("n" not in body for body in later)  # 3 single calls each, never `n`


# --- faults under load -----------------------------------------------------------------------------


class Load:
    """Client threads sending requests through the balancer until stopped; every outcome kept."""

    def __init__(self, cluster: Cluster, models: list[str], threads: int = 6) -> None:
        self._stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads)
        self._futures = [
            self._pool.submit(self._run, cluster.client("KEY_LOAD"), models[i % len(models)]) for i in range(threads)
        ]

    def _run(self, client: openai.OpenAI, model: str) -> None:
        while not self._stop.is_set():
            try:
                ask(client, model)
                with self._lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                with self._lock:
                    self.failures.append(f"{model}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        for future in self._futures:
            future.result()
        self._pool.shutdown()


def test_redis_killed_under_load_fails_no_request_and_resyncs(cluster: Cluster) -> None:
    load = Load(cluster, ["echo", "math-load", "slow"])
    try:
        time.sleep(1.0)
        cluster.redis.kill()
        done_before = load.ok
        wait_until(lambda: load.ok > done_before + 20, "the load stopped when Redis died")
        for p in cluster.instances:
            assert metric(p, "rvr_state_backend_up") == 0.0
        cluster.redis.start()  # the same port, empty: as a Redis restarted without persistence
        for p in cluster.instances:
            wait_until(partial(backend_up, p), "no resync after Redis returned")
        done_after = load.ok
        wait_until(lambda: load.ok > done_after + 10, "the load stopped after Redis returned")
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    # The returned, empty Redis was given what the instances had learned meanwhile.
    shared = cluster.redis.command("HGETALL", f"{PREFIX}:risk/math-load")
    assert shared and float(shared["candidate.count"]) >= 1
    logs = "".join(p.log() for p in cluster.instances)
    assert '"state_backend_down"' in logs and '"state_backend_up"' in logs


def test_sigterm_under_load_fails_no_request(cluster: Cluster) -> None:
    # Last: it stops one instance. Slow requests (0.4 s) are in flight on it when SIGTERM lands.
    load = Load(cluster, ["slow", "echo"], threads=8)
    leaving = cluster.instances[0]
    # One slow request straight to the leaving instance, so one is surely in flight there (the
    # balancer may have sent none there just then).
    direct = ThreadPoolExecutor(1)
    try:
        time.sleep(1.0)
        assert leaving.process is not None
        in_flight = direct.submit(ask, cluster.client("KEY_LOAD", f"{leaving.base_url}/v1"), "slow")
        time.sleep(0.1)
        leaving.process.send_signal(signal.SIGTERM)
        assert in_flight.result(20).choices[0].message.content
        assert leaving.process.wait(20) == 0
        done = load.ok
        wait_until(lambda: load.ok > done + 20, "the load stopped after one instance left")
    finally:
        load.stop()
        direct.shutdown()
    assert not load.failures, load.failures[:5]
    log = leaving.log()
    assert '"event": "draining"' in log
    # In-flight requests were finished, not cut: answers logged after the worker began draining.
    after = log[log.index('"event": "draining"'):]
    assert '"route": "slow", "strategy": "passthrough", "status": 200' in after


# --- single-process checks -------------------------------------------------------------------------


def test_unreachable_redis_at_start_serves_from_memory(stub: StubServer) -> None:
    config = cluster_config(stub.api_base)
    env = {"UPSTREAM_KEY": UPSTREAM_KEY, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", **KEYS}
    with ProxyProcess(config, env=env) as process:
        client = openai.OpenAI(base_url=f"{process.base_url}/v1", api_key=KEYS["KEY_LOAD"], max_retries=0)
        assert ask(client).choices
        assert metric(process, "rvr_state_backend_up") == 0.0
        assert '"state_backend_unreachable_at_start"' in process.log()


def test_limit_config_errors_name_the_key_path() -> None:
    base: dict[str, Any] = {"upstreams": [{"name": "u", "litellm_params": {"model": "openai/m"}}]}
    env = {"K1": "sk-aaaaaaaaaaaa", "K2": "sk-bbbbbbbbbbbb"}
    cases = [
        ({"keys": [{"key": "os.environ/K1", "name": "a", "rpm": 0}]}, "server.keys.0.rpm"),
        ({"keys": [{"key": "os.environ/K1", "name": "a"}, {"key": "os.environ/K2", "name": "a"}]},
         "server.keys.1.name: duplicate"),
        ({"api_keys": ["os.environ/K1"], "keys": [{"key": "os.environ/K1", "name": "a"}]}, "server.keys.0.key"),
        ({"keys": [{"key": "sk-in-the-file", "name": "a"}]}, "server.keys.0.key"),
        ({"keys": [{"key": "os.environ/K1", "name": "has space"}]}, "server.keys.0.name"),
        ({"keys": [{"key": "os.environ/K1", "name": "a", "rph": 5}]}, "server.keys.0.rph"),
        ({"state": {"backend": "redis"}}, "server.state: url is required"),
        ({"state": {"backend": "redis", "url": "http://127.0.0.1:6379"}}, "server.state.url"),
        ({"state": {"backend": "redis", "url": "redis://:hunter2secret@r:6379"}}, "server.state.url"),
    ]
    for server, path in cases:
        with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
            parse_config({**base, "server": server}, environ=env)


def test_sigterm_turns_readyz_to_503_and_chains_to_the_server_handler() -> None:
    from proxy.server.app import create_app
    from proxy.server.drain import Drain

    app = create_app(parse_config({"upstreams": [{"name": "u", "litellm_params": {"model": "openai/m"}}]}))
    proxy = app.state.proxy
    proxy.pipeline.http = object()  # what the lifespan sets once started

    async def readyz() -> tuple[int, dict[str, str]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            response = await client.get("/readyz")
            return response.status_code, response.json()

    assert asyncio.run(readyz()) == (200, {"status": "ready"})
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        drain: Drain = proxy.drain
        drain.install()
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: bool(seen), "SIGTERM did not reach the server's handler", timeout=5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert seen == [signal.SIGTERM] and drain.draining
    assert asyncio.run(readyz()) == (503, {"status": "draining"})


def test_sigterm_with_a_drain_delay_answers_503_first_and_stops_the_server_once_later() -> None:
    from proxy.server.drain import Drain

    seen: list[float] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(time.monotonic()))
    previous_int = signal.getsignal(signal.SIGINT)
    drain = Drain(delay_s=1.5)  # long enough that a busy machine still asserts inside it
    try:
        drain.install()
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor forwards its own: still one stop
        assert drain.draining and not seen  # unready at once, still serving
        wait_until(lambda: bool(seen), "the delayed stop never reached the server's handler", timeout=10)
        time.sleep(0.5)  # a second timer would have fired by now
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    assert len(seen) == 1 and seen[0] - sent >= 1.5
