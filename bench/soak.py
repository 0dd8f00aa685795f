"""Soak test: the real proxy under steady load from an upstream that fails in every way we know.

Starts bench/fault_upstream.py (which gives `--fault-rate` of its generation calls a fault: 500,
429 with Retry-After, a hang past the upstream's `timeout_s`, a connection reset, a stream cut
mid-body, a stream that ends cleanly without finish_reason or [DONE], garbage JSON) and
`python -m proxy.cli serve` with a passthrough route and an adaptive best_of_n route (max_n 4)
on it. Then `--concurrency` aiohttp clients send chat and text completion requests, streaming
and not, to both routes for `--duration` seconds, and check every answer:

* **valid 200**: a well-formed OpenAI body, or a stream of well-formed chunks that ends with
  [DONE] after a finish_reason, carrying the whole answer the upstream wrote for this request;
* **OpenAI error**: a non-200 whose body is `{"error": {"message", "type", "param", "code"}}`,
  or a stream that ends with one such error event and no [DONE];
* **malformed** (anything else), **hung** (no complete answer within `--client-timeout`),
  **lost** (the connection to the proxy broke), **incomplete** (200 and [DONE], but the answer
  is not the upstream's whole answer): all must be 0;
* **cut streams that ended with [DONE]**: the upstream cut, cleanly ended or stalled the very
  stream the proxy relayed (the fault upstream records its faults per request id, which the
  prompt carries), yet the client saw [DONE]. Must be 0.

It reads the proxy's RSS and open fds (from /proc) at the start, the middle and the end, and,
once the load has stopped and `--drain-wait` seconds passed, the upstream calls still in flight
at the fault upstream: a call the proxy gave up on but never closed shows up there. Must be 0.
The exit code is 1 when any must-be-0 count is not 0.

    python bench/soak.py                          # 10 minutes, 64 clients, 10% faults
    python bench/soak.py --duration 30            # a quick check
    python bench/soak.py --concurrency 16 --fault-rate 0.3
    python bench/soak.py --smoke                  # 20 s, 8 clients: a check of the whole path
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import (
    Child,
    HelpFormatter,
    add_smoke,
    apply_smoke,
    markdown_table,
    median,
    percentile,
    start_proxy,
    start_server_script,
)
from bench.fault_upstream import ANSWER, FAULTS, TRUNCATING

ROUTES = {"pass": "soak-pass", "best": "soak-best"}
ENDPOINTS = {"chat": "/v1/chat/completions", "text": "/v1/completions"}
OBJECTS = {"chat": ("chat.completion", "chat.completion.chunk"), "text": ("text_completion", "text_completion")}
ERROR_KEYS = frozenset({"message", "type", "param", "code"})
MUST_BE_ZERO = ("malformed", "hung", "lost", "incomplete")
SMOKE = {"duration": 20.0, "concurrency": 8, "progress_every": 10.0}


# ---- what a client sends -------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    route: str  # a key of ROUTES
    endpoint: str  # a key of ENDPOINTS
    stream: bool

    @property
    def label(self) -> str:
        return f"{self.route} {self.endpoint} {'stream' if self.stream else 'plain'}"


def shapes(endpoints: list[str]) -> list[Shape]:
    return [Shape(r, e, s) for r in ROUTES for e in endpoints for s in (False, True)]


def request_body(shape: Shape, sid: str, rng: random.Random) -> dict[str, Any]:
    """The prompt carries the request id, so the upstream can file its faults under it."""
    text = f"[soak-id={sid}] What is the answer?"
    body: dict[str, Any] = {"model": ROUTES[shape.route], "max_tokens": 32}
    body.update({"messages": [{"role": "user", "content": text}]} if shape.endpoint == "chat" else {"prompt": text})
    if shape.stream:
        body["stream"] = True
        if rng.random() < 0.5:  # both ways: the proxy asks upstream for usage either way
            body["stream_options"] = {"include_usage": True}
    return body


# ---- what a client gets back ---------------------------------------------------------------


@dataclass
class Verdict:
    kind: str  # valid | error | malformed | incomplete | hung | lost
    detail: str = ""  # the error's status/type/code, or why it is malformed
    saw_done: bool = False


class Malformed(Exception):
    """The response breaks the OpenAI shape; the message says where."""


def whole_answer(sid: str) -> re.Pattern[str]:
    """The upstream's answer for this request; anything else is a partial or foreign answer."""
    return re.compile(re.escape(ANSWER.format(sid=sid, n="@")).replace("@", r"4[123]") + r"\Z")


def error_detail(data: Any) -> str:
    """`type/code` of an OpenAI error body; Malformed when it is not one."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not ERROR_KEYS <= error.keys() or set(data) != {"error"}:
        raise Malformed(f"error body not OpenAI-shaped: {json.dumps(data)[:200]}")
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        raise Malformed(f"error message/type not strings: {json.dumps(error)[:200]}")
    return f"{error['type']}/{error['code']}"


def check_plain(shape: Shape, sid: str, status: int, raw: bytes) -> Verdict:
    try:
        data = json.loads(raw)
    except ValueError:
        return Verdict("malformed", f"{status} body is not JSON: {raw[:120]!r}")
    try:
        if status != 200:
            return Verdict("error", f"{status} {error_detail(data)}")
        text = completion_text(shape, data)
    except Malformed as exc:
        return Verdict("malformed", f"{status} {exc}")
    if not whole_answer(sid).match(text):
        return Verdict("incomplete", f"plain answer {text[:80]!r}")
    return Verdict("valid")


def completion_text(shape: Shape, data: Any) -> str:
    """The answer of a non-streamed completion, checking its OpenAI shape on the way."""
    if not isinstance(data, dict):
        raise Malformed("body is not an object")
    obj = OBJECTS[shape.endpoint][0]
    _expect(data.get("object") == obj, f"object {data.get('object')!r}, expected {obj!r}")
    _expect(isinstance(data.get("id"), str) and isinstance(data.get("created"), int), "id/created missing")
    _expect(data.get("model") == ROUTES[shape.route], f"model {data.get('model')!r}")
    usage = data.get("usage")
    _expect(isinstance(usage, dict) and all(isinstance(usage.get(k), int) for k in
                                            ("prompt_tokens", "completion_tokens", "total_tokens")), "usage")
    if shape.route == "best":
        _expect(isinstance(data.get("rvr"), dict), "best_of_n answer without `rvr`")
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        raise Malformed("not exactly one choice")
    choice = choices[0]
    _expect(isinstance(choice, dict) and choice.get("index") == 0, "choice index")
    _expect(isinstance(choice.get("finish_reason"), str) and bool(choice["finish_reason"]), "no finish_reason")
    if shape.endpoint == "text":
        text = choice.get("text")
    else:
        message = choice.get("message")
        _expect(isinstance(message, dict) and message.get("role") == "assistant", "message/role")
        text = message.get("content")
    _expect(isinstance(text, str), "answer is not a string")
    return str(text)


def _expect(condition: bool, why: str) -> None:
    if not condition:
        raise Malformed(why)


@dataclass
class StreamState:
    """What a stream has shown so far."""

    text: str = ""
    finish_reason: str | None = None
    saw_done: bool = False
    error: str | None = None  # `type/code` of an error event


def check_stream(shape: Shape, sid: str, lines: list[bytes]) -> Verdict:
    state = StreamState()
    try:
        for raw in lines:
            read_line(shape, raw.decode("utf-8").rstrip("\r\n"), state)
    except (Malformed, UnicodeDecodeError) as exc:
        return Verdict("malformed", f"stream: {exc}", state.saw_done)
    if state.error is not None:
        return Verdict("error", f"200 stream event {state.error}")
    if not state.saw_done:
        return Verdict("malformed", "stream ended without [DONE] or an error event")
    if state.finish_reason is None:
        return Verdict("malformed", "[DONE] without a finish_reason", True)
    if not whole_answer(sid).match(state.text):
        return Verdict("incomplete", f"stream answer {state.text[:80]!r}", True)
    return Verdict("valid", saw_done=True)


def read_line(shape: Shape, line: str, state: StreamState) -> None:
    """One line of the event stream (the proxy writes one `data:` line per event)."""
    if not line or line.startswith(":"):  # event separators and keep-alive comments
        return
    if not line.startswith("data: "):
        raise Malformed(f"not an SSE data line: {line[:120]!r}")
    if state.saw_done or state.error is not None:
        raise Malformed(f"data after the stream's end: {line[:120]!r}")
    payload = line[len("data: "):]
    if payload == "[DONE]":
        state.saw_done = True
        return
    try:
        data = json.loads(payload)
    except ValueError:
        raise Malformed(f"event is not JSON: {payload[:120]!r}") from None
    if isinstance(data, dict) and "error" in data:
        state.error = error_detail(data)
        return
    read_chunk(shape, data, state)


def read_chunk(shape: Shape, data: Any, state: StreamState) -> None:
    _expect(isinstance(data, dict), "chunk is not an object")
    obj = OBJECTS[shape.endpoint][1]
    _expect(data.get("object") == obj, f"chunk object {data.get('object')!r}, expected {obj!r}")
    _expect(isinstance(data.get("id"), str) and data.get("model") == ROUTES[shape.route], "chunk id/model")
    choices = data.get("choices")
    _expect(isinstance(choices, list), "chunk without choices")
    if not choices:  # the usage / rvr tail
        _expect("usage" in data or "rvr" in data, "empty chunk without usage or rvr")
        return
    for choice in choices:
        _expect(isinstance(choice, dict) and choice.get("index") == 0, "chunk choice index")
        _expect("finish_reason" in choice, "chunk choice without finish_reason key")
        _expect(state.finish_reason is None, "content after the finish_reason")
        if shape.endpoint == "text":
            piece = choice.get("text")
        else:
            delta = choice.get("delta")
            _expect(isinstance(delta, dict), "chunk choice without delta")
            piece = delta.get("content") or ""
        _expect(isinstance(piece, str), "chunk content is not a string")
        state.text += str(piece)
        if choice["finish_reason"] is not None:
            state.finish_reason = str(choice["finish_reason"])


# ---- the load ------------------------------------------------------------------------------


@dataclass
class Result:
    sid: str
    shape: Shape
    verdict: Verdict
    latency_s: float


@dataclass
class Load:
    """Shared by the clients: what to send, where, until when, and what came back."""

    base: str
    shapes: list[Shape]
    deadline: float
    timeout_s: float
    seed: int
    results: list[Result] = field(default_factory=list)
    next_id: int = 0

    def new_sid(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"


async def client(load: Load, session: aiohttp.ClientSession, index: int) -> None:
    rng = random.Random(load.seed * 1000 + index)
    while time.monotonic() < load.deadline:
        shape = rng.choice(load.shapes)
        sid = load.new_sid()
        started = time.monotonic()
        verdict = await one_request(session, load, shape, sid, request_body(shape, sid, rng))
        load.results.append(Result(sid, shape, verdict, time.monotonic() - started))


async def one_request(session: aiohttp.ClientSession, load: Load, shape: Shape, sid: str,
                      body: dict[str, Any]) -> Verdict:
    try:
        async with session.post(load.base + ENDPOINTS[shape.endpoint], json=body,
                                timeout=aiohttp.ClientTimeout(total=load.timeout_s)) as response:
            if shape.stream and response.status == 200:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    return Verdict("malformed", f"stream content-type {response.headers.get('content-type')!r}")
                return check_stream(shape, sid, [line async for line in response.content])
            return check_plain(shape, sid, response.status, await response.read())
    except asyncio.TimeoutError:  # first: aiohttp's timeout errors are also ClientErrors
        return Verdict("hung", f"no complete answer within {load.timeout_s:.0f}s")
    except aiohttp.ClientError as exc:
        return Verdict("lost", f"{type(exc).__name__}: {exc}"[:200])


# ---- the proxy process ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    rss_mib: float
    fds: int


def sample_process(pid: int) -> ProcSample:
    """RSS and open file descriptors from /proc: what leaks would grow."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return ProcSample(rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd")))


async def watch(load: Load, pid: int, middle_at: float, samples: dict[str, ProcSample], every_s: float) -> None:
    """Samples the proxy at the middle of the run, and prints progress for long runs."""
    started = time.monotonic()
    while time.monotonic() < load.deadline:
        await asyncio.sleep(min(every_s, max(load.deadline - time.monotonic(), 0.0)) or 0.01)
        if "middle" not in samples and time.monotonic() >= middle_at:
            samples["middle"] = sample_process(pid)
        kinds = Counter(r.verdict.kind for r in load.results)
        bad = sum(kinds[k] for k in MUST_BE_ZERO)
        now = sample_process(pid)
        print(f"[soak {time.monotonic() - started:5.0f}s] sent {load.next_id}, done {len(load.results)}, "
              f"valid {kinds['valid']}, errors {kinds['error']}, bad {bad}, "
              f"proxy RSS {now.rss_mib:.0f} MiB, fds {now.fds}", file=sys.stderr, flush=True)


def start_fault_upstream(workdir: Path, fault_rate: float, faults: str, seed: int) -> tuple[Child, str]:
    return start_server_script("fault-upstream", "fault_upstream.py",
                               ["--fault-rate", str(fault_rate), "--faults", faults, "--seed", str(seed)], workdir)


def proxy_config(upstream_base: str, args: argparse.Namespace) -> dict[str, Any]:
    # One retry with a short backoff, so some faults are absorbed and some reach the client.
    upstream = {"name": "faulty", "timeout_s": args.upstream_timeout, "retries": 1, "retry_backoff_s": 0.05,
                "max_concurrency": 256,
                "litellm_params": {"model": "openai/soak", "api_base": f"{upstream_base}/v1",
                                   "api_key": "os.environ/SOAK_UPSTREAM_KEY"}}
    best = {"name": "best_of_n", "max_n": 4, "adaptive": True, "verifiers": [{"type": "self_consistency"}]}
    return {"server": {"request_timeout_s": args.request_timeout},
            "upstreams": [upstream],
            "routes": [{"model": ROUTES["pass"], "upstream": "faulty", "strategy": {"name": "passthrough"}},
                       {"model": ROUTES["best"], "upstream": "faulty", "strategy": best}]}


async def fetch_stats(upstream_base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{upstream_base}/stats") as response:
        return dict(await response.json())


# ---- the run -------------------------------------------------------------------------------


@dataclass
class Report:
    results: list[Result]
    samples: dict[str, ProcSample]
    stats: dict[str, Any]  # the fault upstream's, after the drain
    wall_s: float
    drain_s: float


async def soak(args: argparse.Namespace, proxy_base: str, upstream_base: str, pid: int) -> Report:
    samples = {"start": sample_process(pid)}
    started = time.monotonic()
    load = Load(proxy_base, shapes(args.endpoints.split(",")), started + args.duration, args.client_timeout,
                args.seed)
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        watcher = asyncio.ensure_future(watch(load, pid, started + args.duration / 2, samples, args.progress_every))
        await asyncio.gather(*(client(load, session, i) for i in range(args.concurrency)))
        watcher.cancel()
    samples.setdefault("middle", sample_process(pid))  # a run too short for the watcher to get there
    wall = time.monotonic() - started
    # The clients are done; what is still open upstream now was abandoned, unless it is about to
    # close: give the proxy's timeouts and connection teardown time to act.
    await asyncio.sleep(args.drain_wait)
    stats = await fetch_stats(upstream_base)
    samples["end"] = sample_process(pid)
    return Report(load.results, samples, stats, wall, time.monotonic() - started - wall)


def cut_streams(report: Report) -> tuple[Counter[str], Counter[str]]:
    """Per truncating fault: client streams whose relayed upstream stream had it, and of those
    the ones whose client saw [DONE]."""
    faults = report.stats.get("faults_by_id", {})
    seen: Counter[str] = Counter()
    done: Counter[str] = Counter()
    for result in report.results:
        if not result.shape.stream:
            continue
        for tag in set(faults.get(result.sid, [])) & set(TRUNCATING):
            seen[tag] += 1
            done[tag] += result.verdict.saw_done
    return seen, done


def render(report: Report, args: argparse.Namespace) -> tuple[str, int]:
    """The report as Markdown, and how many must-be-0 counts were not 0."""
    kinds = Counter(r.verdict.kind for r in report.results)
    errors = Counter(r.verdict.detail for r in report.results if r.verdict.kind == "error")
    seen, done = cut_streams(report)
    in_flight = int(report.stats.get("in_flight", -1))
    failures = sum(kinds[k] for k in MUST_BE_ZERO) + sum(done.values()) + (in_flight != 0)
    sent = len(report.results)
    s = report.samples
    cut_detail = ", ".join(f"{tag.split('/')[0]} {done[tag]}/{seen[tag]}" for tag in TRUNCATING)
    out = [f"## Soak: {args.concurrency} clients, {report.wall_s:.0f} s, fault rate {args.fault_rate:.0%} "
           f"({os.cpu_count()} cores)", "",
           "| measure | value | must be 0 |", "|---|---:|:---:|",
           f"| requests sent (completed) | {sent} ({sent / max(report.wall_s, 1e-9):.1f}/s) | |",
           f"| valid 200s | {kinds['valid']} ({kinds['valid'] / max(sent, 1):.1%}) | |"]
    out += [f"| OpenAI error: {detail} | {count} | |" for detail, count in sorted(errors.items())]
    out += [f"| malformed | {kinds['malformed']} | yes |",
            f"| hung (nothing complete within {args.client_timeout:.0f} s) | {kinds['hung']} | yes |",
            f"| lost (connection to the proxy broke) | {kinds['lost']} | yes |",
            f"| incomplete answer in a 200 | {kinds['incomplete']} | yes |",
            f"| cut streams that ended with [DONE] | {sum(done.values())} of {sum(seen.values())} "
            f"({cut_detail}) | yes |",
            f"| proxy RSS MiB start / middle / end | {s['start'].rss_mib:.0f} / {s['middle'].rss_mib:.0f} / "
            f"{s['end'].rss_mib:.0f} | |",
            f"| proxy open fds start / middle / end | {s['start'].fds} / {s['middle'].fds} / {s['end'].fds} | |",
            f"| upstream calls in flight {args.drain_wait:.0f} s after the load stopped | {in_flight} | yes |"]
    calls: dict[str, int] = report.stats.get("calls", {})
    faulted = sum(v for k, v in calls.items() if k != "normal")
    out += ["", f"Upstream calls: {sum(calls.values())}, {faulted} with a fault: "
            + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()) if k != "normal"), ""]
    out += by_shape(report.results)
    out += ["", *by_fault(report)]
    for kind in MUST_BE_ZERO:
        examples = Counter(r.verdict.detail for r in report.results if r.verdict.kind == kind)
        if examples:
            out += ["", f"{kind}: " + "; ".join(f"{d} (x{c})" for d, c in examples.most_common(5))]
    return "\n".join(out), failures


def by_shape(results: list[Result]) -> list[str]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.shape.label, []).append(r)
    rows = []
    for label, group in sorted(groups.items()):
        kinds = Counter(r.verdict.kind for r in group)
        latencies = [r.latency_s for r in group]
        rows.append([label, len(group), kinds["valid"], kinds["error"], sum(kinds[k] for k in MUST_BE_ZERO),
                     f"{median(latencies):.3f}", f"{percentile(latencies, 99):.3f}"])
    header = ["route endpoint mode", "sent", "valid", "errors", "must-be-0", "p50 s", "p99 s"]
    return markdown_table(header, rows, "lrrrrrr").splitlines()


def by_fault(report: Report) -> list[str]:
    """How the clients fared on the requests during which the upstream injected each fault
    (a request can count under several faults: retries and best_of_n make several calls)."""
    faults = report.stats.get("faults_by_id", {})
    tally: dict[str, Counter[str]] = {}
    for r in report.results:
        for tag in set(faults.get(r.sid, [])):
            tally.setdefault(tag, Counter())[r.verdict.kind] += 1
    rows = [[tag, sum(kinds.values()), kinds["valid"], kinds["error"], sum(kinds[k] for k in MUST_BE_ZERO)]
            for tag, kinds in sorted(tally.items())]
    header = ["injected fault / upstream call", "client requests", "valid", "OpenAI error", "must-be-0"]
    return markdown_table(header, rows, "lrrrr").splitlines()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 10 minutes)")
    parser.add_argument("--concurrency", type=int, default=64, help="clients, each with one request in flight")
    parser.add_argument("--fault-rate", type=float, default=0.1, help=f"share of upstream calls given one of: "
                        f"{', '.join(FAULTS)}")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of the faults")
    parser.add_argument("--endpoints", default="chat,text", help="comma-separated: chat, text")
    parser.add_argument("--upstream-timeout", type=float, default=2.0, help="the upstream's timeout_s in the proxy")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="the proxy's server.request_timeout_s")
    parser.add_argument("--client-timeout", type=float, default=120.0, help="past this a request counts as hung")
    parser.add_argument("--drain-wait", type=float, default=5.0, help="seconds between the load's end and "
                        "reading the upstream's in-flight count")
    parser.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=0)
    add_smoke(parser, "20 s of load from 8 clients")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    if not set(args.endpoints.split(",")) <= ENDPOINTS.keys():
        parser.error(f"--endpoints takes {', '.join(ENDPOINTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="rvr-soak-"))
    upstream, upstream_base = start_fault_upstream(workdir, args.fault_rate, args.faults, args.seed)
    proxy: Child | None = None
    try:
        proxy, proxy_base = start_proxy(workdir, proxy_config(upstream_base, args),
                                        env={"SOAK_UPSTREAM_KEY": "sk-soak-upstream"})
        report = asyncio.run(soak(args, proxy_base, upstream_base, proxy.process.pid))
    finally:
        if proxy is not None:
            proxy.stop()
        upstream.stop()
    table, failures = render(report, args)
    print("Command: " + " ".join(["python", "bench/soak.py", *(sys.argv[1:] if argv is None else argv)]) + "\n")
    print(table)
    print(f"\n{'FAILED' if failures else 'PASSED'}: {failures} must-be-0 count(s) not 0. Logs: {workdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
