"""Judges and reward models on loopback whose preferences the tests control, for verifier audits.

Desirable answers in the test pairs carry the word "kindly"; the verifiers below know only that
word, the slot an answer is shown in, or its length, so each test can say in advance exactly
which flags must fire.

Chat judges (`POST /v1/chat/completions`, behaviour = the model name after `openai/`):
- `fair`: prefers the answer with "kindly", in every template and either order.
- `first`: pairwise, always answers "A" (pointwise: every answer 5/10, `yes`).
- `split`: the `verdict` template prefers "kindly", the `hhh` template the other answer;
  pointwise, rubric prefers "kindly" and yes/no the other answer.
- `garbled`: never gives a verdict that parses.

Fusers (the same endpoint, shown "Candidate 1: ... Candidate 2: ..." by a route's `selection.fusion`):
- `fuser-kind`: writes the shown answer with "kindly" in it. `fuser-first`: copies Candidate 1.

Reward models (`POST /score/<behaviour>`, the generic `{messages, responses}` API):
- `fair`: 1 for "kindly", else 0. `unkind`: the opposite. `first`: the first response listed
  scores highest. `longer`: the number of characters. `null`: no usable score.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MARK = "kindly"
_SLOTS = re.compile(r"# Response A\n(?P<a>.*?)\n\n# Response B\n(?P<b>.*?)\n\nWhich response", re.DOTALL)
_HHH = re.compile(r"\[The start of response A\]\n(?P<a>.*?)\n\[The end of response A\].*?"
                  r"\[The start of response B\]\n(?P<b>.*?)\n\[The end of response B\]", re.DOTALL)
_GRADED = re.compile(r"# Response to grade\n(?P<r>.*?)\n\n", re.DOTALL)


_ANSWERS = re.compile(r"Candidate \d+:\n(?P<text>.*?)(?=\n\nCandidate \d+:|\n\nWrite the single best)", re.DOTALL)


def _judge(behaviour: str, messages: list[dict[str, Any]]) -> str:
    text = "\n".join(str(m.get("content") or "") for m in messages)
    if behaviour.startswith("fuser-"):
        shown = [m.group("text") for m in _ANSWERS.finditer(text)]
        kind = [a for a in shown if MARK in a]
        return (kind[0] if behaviour == "fuser-kind" and kind else shown[0]) if shown else "no answers shown"
    if behaviour == "garbled":
        return "I would rather not say."
    pair = _SLOTS.search(text)
    hhh = _HHH.search(text)
    if pair or hhh:
        found = pair or hhh
        assert found is not None
        if behaviour == "first":
            return "Verdict: A" if pair else "[[A]]"
        a_kind = MARK in found.group("a")
        b_kind = MARK in found.group("b")
        prefer_kind = not (behaviour == "split" and hhh is not None)
        if a_kind == b_kind:
            slot = "tie"
        else:
            slot = "A" if a_kind == prefer_kind else "B"
        return f"Verdict: {slot}" if pair else f"[[{slot}]]"
    graded = _GRADED.search(text)
    kind = graded is not None and MARK in graded.group("r")
    if behaviour == "first":
        return "Fine.\nScore: 5\nVerdict: yes"
    if "Verdict: yes" in text:  # the yes/no template
        good = kind if behaviour != "split" else not kind
        return "Verdict: yes" if good else "Verdict: no"
    if "Rating: N" in text:
        return "Rating: 4" if kind else "Rating: 2"
    return "Score: 9" if kind else "Score: 2"


def _rewards(behaviour: str, responses: list[str]) -> list[float | None]:
    if behaviour == "fair":
        return [1.0 if MARK in r else 0.0 for r in responses]
    if behaviour == "unkind":
        return [0.0 if MARK in r else 1.0 for r in responses]
    if behaviour == "first":
        return [float(len(responses) - i) for i in range(len(responses))]
    if behaviour == "longer":
        return [float(len(r)) for r in responses]
    return [None for _ in responses]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: AuditUpstream  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        with self.server.lock:
            self.server.requests.append({**body, "_path": self.path})
        if self.path.startswith("/score/"):
            behaviour = self.path.rsplit("/", 1)[-1]
            self._json({"scores": _rewards(behaviour, [str(r) for r in body.get("responses", [])])})
            return
        behaviour = str(body.get("model", "")).split("/")[-1]
        reply = _judge(behaviour, body.get("messages") or [])
        self._json({
            "id": "chatcmpl-audit", "object": "chat.completion", "created": 0, "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        })

    def _json(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class AuditUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> AuditUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
