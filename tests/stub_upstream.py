"""A small OpenAI-compatible upstream for tests: real HTTP on loopback, scripted behaviour.

The model name picks the behaviour (see `Handler.do_POST`). Every request body is logged so tests can
check exactly what the proxy sent, and a slow request notices when its caller hangs up.

Two behaviours answer as OpenAI itself does, for the conformance tests:

* `rich`: every field OpenAI sends (`system_fingerprint`, `service_tier`, `message.refusal`,
  `message.annotations`, the usage details, `logprobs` with `top_logprobs`, `delta.refusal` and
  `choices[].logprobs: null` in chunks), deterministically: fixed `created`, no randomness, so a
  direct answer and a proxied one can be compared field by field.
* `tools-stream`: with `tools`, calls them; streamed, as OpenAI streams tool calls (a first delta
  with the call's index, id, type, name and empty arguments, then argument fragments, then
  `finish_reason: "tool_calls"`); not streamed, the same calls assembled.

Any behaviour streams `n` choices (chunks with index 0..n-1, interleaved) when asked for `n > 1`.

Three prefixes change how a one-choice stream is sent: `gzip-` (`gzip-echo`) compresses it, as a
server behind a compressing front end does; `no-usage-` (`no-usage-echo`) ignores
`stream_options.include_usage`, as some OpenAI-compatible servers do; `late-usage-`
(`late-usage-echo`) sends its usage chunk `slow_s` after `finish_reason`, so a client can hang up
in between, having read the whole answer; `drip-` waits `DRIP_S` after each piece, so a client
can tell a stream relayed as it comes from one replayed at its end.

`answer-X` always answers "The answer is X." (a panelist that is always right, or always wrong).
"""

from __future__ import annotations

import json
import random
import re
import select
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "42"
RICH_CREATED = 1_700_000_000  # `rich` answers carry this `created`, streamed or not
RICH_FINGERPRINT = "fp_stub_rich"
RICH_SERVICE_TIER = "default"
DRIP_S = 0.4
TOOL_ARGUMENTS = ({"city": "Paris", "unit": "celsius"}, {"city": "Tokyo", "unit": "celsius"})


@dataclass
class StubState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    completed: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    flaky_seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, model: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r.get("model") == model]


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content") or "") for m in body["messages"])
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def _math_answer(rng: random.Random, body: dict[str, Any]) -> str:
    """Right ("42") with probability p, else one of a few wrong answers: a discrete task."""
    p = float(re.search(r"p=([0-9.]+)", _prompt_text(body)).group(1)) if "p=" in _prompt_text(body) else 0.6
    if rng.random() < p:
        return f"Let me think. The answer is {ANSWER}."
    return f"Let me think. The answer is {rng.choice(['41', '43', '24', '7'])}."


def _rich_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _token_logprob(token: str, lp: float, top: int) -> dict[str, Any]:
    """One entry of a chat `logprobs.content`, with `top` alternatives as OpenAI gives them."""
    alternatives = [token] + [f"{token}~{k}" for k in range(1, top)]
    return {
        "token": token,
        "logprob": lp,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp - k, "bytes": list(t.encode())} for k, t in enumerate(alternatives[:top])
        ],
    }


def _text_logprobs(tokens: list[str], lp: float, top: int, offset: int = 0) -> dict[str, Any]:
    """A text completion's `logprobs` object for `tokens` (`top` alternatives per token)."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [lp] * len(tokens),
        "top_logprobs": [{t: lp, **{f"{t}~{k}": lp - k for k in range(1, top)}} for t in tokens] if top else None,
        "text_offset": offsets,
    }


def _tool_calls(body: dict[str, Any], choice: int) -> list[dict[str, Any]]:
    """The calls `tools-stream` makes: the function `tool_choice` names, else each tool (up to two)."""
    tools = [t["function"]["name"] for t in body.get("tools") or [] if t.get("type") == "function"]
    forced = body.get("tool_choice")
    if isinstance(forced, dict) and forced.get("type") == "function":
        tools = [forced["function"]["name"]]
    return [
        {
            "id": f"call_{choice}_{k}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(TOOL_ARGUMENTS[k % len(TOOL_ARGUMENTS)])},
        }
        for k, name in enumerate(tools[:2])
    ]


def _fragments(text: str, size: int = 5) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _judge_reply(body: dict[str, Any]) -> str:
    """A judge that gives high marks to answers containing 42 and can be made unparseable."""
    text = _prompt_text(body)
    if "UNPARSEABLE" in text:
        return "I refuse to give a number."
    if "# Response A" in text:  # pairwise: prefers the response with 42, wherever it stands
        a, _, b = text.split("# Response A", 1)[1].partition("# Response B")
        if (ANSWER in a) == (ANSWER in b.split("Which response is better?")[0]):
            return "Verdict: tie"
        return "Verdict: A" if ANSWER in a else "Verdict: B"
    graded = text.split("Response to grade", 1)[-1].split("Rate the response", 1)[0]
    return "Looks right.\nScore: 9\nVerdict: yes" if ANSWER in graded else "Wrong.\nScore: 2\nVerdict: no"


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without this a kept-alive reply stalls ~44 ms.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: StubServer  # type: ignore[assignment]
    _gzip: Any = None  # the compressor of a `gzip-` behaviour's stream

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        return

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        with self.server.state.lock:
            self.server.state.requests.append({**body, "_path": self.path})
        if self.path.endswith("/score"):
            self._reward(body)
            return
        if self.path.endswith("/embeddings"):
            self._embeddings(body)
            return
        model = str(body.get("model", ""))
        behaviour = model.split("/")[-1]
        compressed, uncounted = behaviour.startswith("gzip-"), behaviour.startswith("no-usage-")
        late_usage = behaviour.startswith("late-usage-")
        drip = behaviour.startswith("drip-")
        behaviour = behaviour.removeprefix("gzip-").removeprefix("no-usage-").removeprefix("late-usage-")
        behaviour = behaviour.removeprefix("drip-")
        self._gzip = zlib.compressobj(wbits=31) if compressed else None
        n = int(body.get("n") or 1)
        if behaviour == "fail":
            self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
            return
        if behaviour == "echo-fail":  # a careless upstream: its error repeats our headers and the prompt
            headers = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
            message = f"cannot serve {_prompt_text(body)[:200]!r} (headers: {headers})"
            self._json(500, {"error": {"message": message, "type": "server_error"}})
            return
        if behaviour == "flaky":  # the first call for each prompt fails with 503, a retry succeeds
            prompt = _prompt_text(body)
            with self.server.state.lock:
                first = prompt not in self.server.state.flaky_seen
                self.server.state.flaky_seen.add(prompt)
            if first:
                self._json(503, {"error": {"message": "overloaded", "type": "server_error"}})
                return
        if behaviour == "busy":  # holds each call a while, counting how many overlap
            with self.server.state.lock:
                self.server.state.in_flight += 1
                self.server.state.max_in_flight = max(self.server.state.max_in_flight, self.server.state.in_flight)
            time.sleep(0.3)
            with self.server.state.lock:
                self.server.state.in_flight -= 1
        if behaviour == "reject-n" and n > 1:
            self._json(400, {"error": {"message": "n must be 1", "type": "invalid_request_error", "param": "n"}})
            return
        if behaviour in ("slow", "timeout"):
            if not self._wait_or_hangup(float(self.server.slow_s)):
                with self.server.state.lock:
                    self.server.state.cancelled += 1
                return
        if behaviour == "one":
            n = 1
        text_mode = self.path.endswith("/completions") and not self.path.endswith("/chat/completions")
        contents = [self._content(behaviour, body, i) for i in range(n)]
        calls_tools = behaviour == "tools-stream" and not text_mode and bool(body.get("tools"))
        calls_tools = calls_tools and body.get("tool_choice") != "none"
        if body.get("stream") and calls_tools:
            self._stream_tool_calls(body, n)
        elif body.get("stream") and (behaviour == "rich" or n > 1) and behaviour not in ("cut", "ends-early"):
            self._stream_choices(body, contents, text_mode, rich=behaviour == "rich")
        elif body.get("stream") and behaviour in ("bad-index", "huge-event"):
            self._stream_hostile(body, behaviour)
        elif body.get("stream"):
            cut, ends_early = behaviour == "cut", behaviour == "ends-early"
            self._stream(
                body, contents[0], text_mode, cut=cut, ends_early=ends_early, counted=not uncounted,
                late_usage=late_usage, drip=drip,
            )
        elif behaviour == "rich":
            self._json(200, self._rich_completion(body, contents, text_mode))
        elif calls_tools:
            self._json(200, self._tool_completion(body, n))
        else:
            self._json(200, self._completion(body, contents, text_mode, behaviour))
        with self.server.state.lock:
            self.server.state.completed += 1

    # ---- behaviours ---------------------------------------------------------------------

    def _content(self, behaviour: str, body: dict[str, Any], index: int) -> str:
        if behaviour.startswith("answer-"):
            return f"The answer is {behaviour.removeprefix('answer-')}."
        if behaviour == "math":
            return _math_answer(self.server.rng, body)
        if behaviour == "judge":
            return _judge_reply(body)
        if behaviour == "judge-first":  # a judge with position bias and nothing else
            return "Verdict: A"
        if behaviour == "json":  # half the answers break the schema the tests ask for
            return json.dumps({"answer": 42}) if self.server.rng.random() < 0.5 else json.dumps({"answer": "forty-two"})
        if behaviour == "paraphrase":
            return "Please compute: " + _prompt_text(body).split("\n")[-1]
        return f"echo {index}: {_prompt_text(body)[-200:]}"

    def _completion(self, body: dict[str, Any], contents: list[str], text_mode: bool, behaviour: str) -> dict[str, Any]:
        prompt_tokens = _words(_prompt_text(body))
        choices = []
        for i, content in enumerate(contents):
            logprobs = None
            if body.get("logprobs"):
                lp = -0.1 if ANSWER in content else -2.0
                logprobs = (
                    {"tokens": content.split(), "token_logprobs": [lp] * _words(content)}
                    if text_mode
                    else {
                        "content": [
                            {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t in content.split()
                        ]
                    }
                )
            if text_mode:
                choices.append({"index": i, "text": content, "finish_reason": "stop", "logprobs": logprobs})
                continue
            message: dict[str, Any] = {"role": "assistant", "content": content}
            finish = "stop"
            if behaviour == "tools" and body.get("tools"):
                name = body["tools"][0]["function"]["name"]
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps({"city": "Paris"})},
                        }
                    ],
                }
                finish = "tool_calls"
            choices.append({"index": i, "message": message, "finish_reason": finish, "logprobs": logprobs})
        completion_tokens = sum(_words(c) for c in contents)
        return {
            "id": "stub-1",
            "object": "text_completion" if text_mode else "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _stream(
        self, body: dict[str, Any], content: str, text_mode: bool, cut: bool, ends_early: bool = False,
        counted: bool = True, late_usage: bool = False, drip: bool = False,
    ) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")  # as real servers stream: a cut is detectable
        if self._gzip is not None:
            self.send_header("content-encoding", "gzip")
        self.end_headers()
        pieces = content.split(" ")
        for i, piece in enumerate(pieces):
            token = piece if i == 0 else " " + piece
            if text_mode:
                choice = {"index": 0, "text": token, "finish_reason": None}
            else:
                choice = {
                    "index": 0,
                    "delta": {"role": "assistant", "content": token} if i == 0 else {"content": token},
                    "finish_reason": None,
                }
            self._event(
                {
                    "id": "stub-s",
                    "object": "text_completion" if text_mode else "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [choice],
                }
            )
            if drip:
                self.wfile.flush()
                time.sleep(DRIP_S)
            if cut and i == 1:
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if ends_early and i == 1:  # a clean end of the body, but no finish_reason and no [DONE]
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                return
        final = (
            {"index": 0, "text": "", "finish_reason": "stop"}
            if text_mode
            else {"index": 0, "delta": {}, "finish_reason": "stop"}
        )
        self._event(
            {
                "id": "stub-s",
                "object": "text_completion" if text_mode else "chat.completion.chunk",
                "created": 0,
                "model": body.get("model"),
                "choices": [final],
            }
        )
        if late_usage and not self._wait_or_hangup(float(self.server.slow_s)):
            with self.server.state.lock:
                self.server.state.cancelled += 1
            return
        if counted and (body.get("stream_options") or {}).get("include_usage"):
            prompt_tokens = _words(_prompt_text(body))
            self._event(
                {
                    "id": "stub-s",
                    "object": "text_completion" if text_mode else "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(pieces),
                        "total_tokens": prompt_tokens + len(pieces),
                    },
                }
            )
        self._chunk(b"data: [DONE]\n\n")
        self._end_body()

    def _rich_completion(self, body: dict[str, Any], contents: list[str], text_mode: bool) -> dict[str, Any]:
        """An answer with every field OpenAI sends, the same every time for the same request."""
        top = int(body.get("top_logprobs") or 0)
        choices = []
        for i, content in enumerate(contents):
            tokens = [t if k == 0 else " " + t for k, t in enumerate(content.split(" "))]
            if text_mode:
                asked = body.get("logprobs")  # an integer: how many alternatives per token
                logprobs = _text_logprobs(tokens, -0.25, int(asked)) if asked is not None else None
                choices.append({"text": content, "index": i, "logprobs": logprobs, "finish_reason": "stop"})
                continue
            logprobs = (
                {"content": [_token_logprob(t, -0.25, top) for t in tokens], "refusal": None}
                if body.get("logprobs")
                else None
            )
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": "stop"})
        answer: dict[str, Any] = {
            "id": "stub-rich",
            "object": "text_completion" if text_mode else "chat.completion",
            "created": RICH_CREATED,
            "model": body.get("model"),
            "system_fingerprint": RICH_FINGERPRINT,
            "choices": choices,
            "usage": _rich_usage(_words(_prompt_text(body)), sum(_words(c) for c in contents)),
        }
        if not text_mode:
            answer["service_tier"] = RICH_SERVICE_TIER
        return answer

    def _tool_completion(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        """`tools-stream` not streamed: the calls its stream would make, assembled."""
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": _tool_calls(body, i)},
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
            for i in range(n)
        ]
        completion_tokens = sum(len(c["function"]["arguments"]) for c in _tool_calls(body, 0)) * n
        prompt_tokens = _words(_prompt_text(body))
        return {
            "id": "stub-tools",
            "object": "chat.completion",
            "created": RICH_CREATED,
            "model": body.get("model"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _stream_hostile(self, body: dict[str, Any], behaviour: str) -> None:
        """`bad-index`: a chunk for choice 7 of a one-choice request; `huge-event`: one 2 MB chunk."""
        self._open_stream()
        base = {"id": "stub-h", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}
        if behaviour == "bad-index":
            self._event({**base, "choices": [{"index": 7, "delta": {"content": "seven"}, "finish_reason": None}]})
        else:
            huge = {"index": 0, "delta": {"content": "x" * 2_000_000}, "finish_reason": None}
            self._event({**base, "choices": [huge]})
        self._event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        self._chunk(b"data: [DONE]\n\n")
        self._end_body()

    def _open_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        if self._gzip is not None:
            self.send_header("content-encoding", "gzip")
        self.end_headers()

    def _end_stream(self, body: dict[str, Any], base: dict[str, Any], usage: dict[str, Any]) -> None:
        if (body.get("stream_options") or {}).get("include_usage"):
            self._event({**base, "choices": [], "usage": usage})
        self._chunk(b"data: [DONE]\n\n")
        self._end_body()

    def _stream_choices(self, body: dict[str, Any], contents: list[str], text_mode: bool, rich: bool) -> None:
        """`n` choices streamed as OpenAI does, interleaved: each chunk carries one choice's delta.

        `rich` adds what OpenAI's chunks carry besides: the fingerprint and service tier on every
        chunk, `logprobs` on every choice (null unless asked for), `refusal: null` in the first
        delta, and the usage details.
        """
        self._open_stream()
        base: dict[str, Any] = {
            "id": "stub-rich" if rich else "stub-s",
            "object": "text_completion" if text_mode else "chat.completion.chunk",
            "created": RICH_CREATED if rich else 0,
            "model": body.get("model"),
        }
        if rich:
            base["system_fingerprint"] = RICH_FINGERPRINT
            if not text_mode:
                base["service_tier"] = RICH_SERVICE_TIER
        top = int(body.get("top_logprobs") or 0)
        tokens = [[t if k == 0 else " " + t for k, t in enumerate(c.split(" "))] for c in contents]
        offsets = [0] * len(contents)
        for step in range(max(len(t) for t in tokens) + 1):  # step 0: the chat role delta
            for index, pieces in enumerate(tokens):
                if text_mode and step == 0:
                    continue
                if step > len(pieces):
                    continue
                token = pieces[step - 1] if step else ""
                choice: dict[str, Any] = {"index": index}
                if text_mode:
                    choice["text"] = token
                    if rich:
                        asked = body.get("logprobs")
                        lp = _text_logprobs([token], -0.25, int(asked), offsets[index]) if asked is not None else None
                        choice["logprobs"] = lp
                        offsets[index] += len(token)
                else:
                    if step == 0:
                        choice["delta"] = {"role": "assistant", "content": ""}
                        if rich:
                            choice["delta"]["refusal"] = None
                    else:
                        choice["delta"] = {"content": token}
                    if rich:
                        choice["logprobs"] = (
                            {"content": [_token_logprob(token, -0.25, top)], "refusal": None}
                            if body.get("logprobs") and step
                            else None
                        )
                choice["finish_reason"] = None
                self._event({**base, "choices": [choice]})
        for index in range(len(contents)):
            final: dict[str, Any] = {"index": index}
            if text_mode:
                final["text"] = ""
            else:
                final["delta"] = {}
            if rich:
                final["logprobs"] = None
            final["finish_reason"] = "stop"
            self._event({**base, "choices": [final]})
        prompt_tokens = _words(_prompt_text(body))
        completion_tokens = sum(len(t) for t in tokens)
        usage = (
            _rich_usage(prompt_tokens, completion_tokens)
            if rich
            else {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        )
        self._end_stream(body, base, usage)

    def _stream_tool_calls(self, body: dict[str, Any], n: int) -> None:
        """Tool calls streamed as OpenAI streams them, for each of `n` choices in turn."""
        self._open_stream()
        base = {"id": "stub-tools", "object": "chat.completion.chunk", "created": RICH_CREATED}
        base["model"] = body.get("model")

        def send(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            self._event({**base, "choices": [choice]})

        fragments = 0
        for index in range(n):
            for k, call in enumerate(_tool_calls(body, index)):
                head = {
                    "index": k,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""},
                }
                first: dict[str, Any] = {"role": "assistant", "content": None} if k == 0 else {}  # as OpenAI's
                send(index, {**first, "tool_calls": [head]})
                for piece in _fragments(call["function"]["arguments"]):
                    send(index, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
                    fragments += 1
            send(index, {}, "tool_calls")
        prompt_tokens = _words(_prompt_text(body))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": fragments}
        usage["total_tokens"] = prompt_tokens + fragments
        self._end_stream(body, base, usage)

    def _embeddings(self, body: dict[str, Any]) -> None:
        """Bag-of-words vectors over 32 hashed buckets: texts sharing words point the same way."""
        texts = body.get("input") or []
        texts = [texts] if isinstance(texts, str) else texts
        data = []
        for i, text in enumerate(texts):
            vector = [0.0] * 32
            for word in str(text).lower().split():
                vector[sum(word.encode()) % 32] += 1.0
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_words(str(t)) for t in texts)
        self._json(200, {"object": "list", "data": data, "model": body.get("model"),
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _reward(self, body: dict[str, Any]) -> None:
        responses = body.get("responses") or []
        # `/rm-q<q>/score`: a reward model of controlled quality, honest about each response
        # with probability q and the opposite otherwise; any other path: always honest.
        quality = re.search(r"/rm-q([0-9.]+)/", self.path)
        q = float(quality.group(1)) if quality else 1.0
        rng = self.server.rng
        honest = [rng.random() < q for _ in responses]
        self._json(200, {"scores": [3.0 if (ANSWER in str(r)) == h else -3.0 for r, h in zip(responses, honest)]})

    # ---- plumbing -------------------------------------------------------------------------

    def _wait_or_hangup(self, seconds: float) -> bool:
        """Sleep, but return False as soon as the caller closes the connection."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                return False
        return True

    def _event(self, data: dict[str, Any]) -> None:
        self._chunk(b"data: " + json.dumps(data).encode() + b"\n\n")

    def _chunk(self, payload: bytes) -> None:
        if self._gzip is not None:  # each event decodable on arrival, as a streaming server sends it
            payload = self._gzip.compress(payload) + self._gzip.flush(zlib.Z_SYNC_FLUSH)
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        self.wfile.flush()

    def _end_body(self) -> None:
        if self._gzip is not None:
            tail = self._gzip.flush()
            self.wfile.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status: int, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of parallel requests queues instead of being refused (default 5)

    def __init__(self, slow_s: float = 5.0, seed: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = StubState()
        self.slow_s = slow_s
        self.rng = random.Random(seed)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
