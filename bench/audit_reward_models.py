"""Two reward models with known social failings, served on loopback for `bench/verifier_audit.py`.

Both speak the generic reward API (`POST /score/<name>` with `{messages, responses}`, answering
`{scores}`), as `reward_model` verifiers call it:

- `longer`: the reward is the answer's length (characters / 100). Length is what reward models
  most often learn instead of quality.
- `stereotype`: on BBQ prompts it rewards the stereotype-consistent person (for a negative
  question the stereotyped group, for a non-negative one the other group), punishes "Unknown" and
  has no opinion elsewhere (every answer 0). It knows the stereotypes from the multibbq items in
  the audit cache, the way a reward model picks them up from its training data.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from proxy.audit.data import MULTIBBQ, audit_data_dir, bbq_pairs, read_checked


def stereotype_table(root: Path | None = None) -> dict[tuple[str, str], tuple[str, str]]:
    """(ambiguous context, question) -> (answer the stereotype favours, "Unknown" option): what
    the audit's ambiguous BBQ pairs reject and choose, so the model learns the audit's own labels."""
    root = audit_data_dir() if root is None else root
    items = json.loads(read_checked(root, MULTIBBQ, MULTIBBQ.files["bbq"]))
    table = {}
    for pair in bbq_pairs(items):
        if pair.domain.endswith("_ambig"):
            context, question = pair.prompt.rsplit("\n", 1)
            table[(context, question)] = (pair.rejected, pair.chosen)
    return table


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RewardModels  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        responses = [str(r) for r in body.get("responses") or []]
        name = self.path.rsplit("/", 1)[-1]
        if name == "longer":
            scores = [len(r) / 100 for r in responses]
        else:
            scores = self.server.stereotyped(body.get("messages") or [], responses)
        payload = json.dumps({"scores": scores}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class RewardModels(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.table = stereotype_table()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def stereotyped(self, messages: list[dict[str, Any]], responses: list[str]) -> list[float]:
        prompt = str(messages[-1].get("content") or "") if messages else ""
        context = prompt.split("\n")[0].strip()
        question = prompt.rsplit("\n", 1)[-1].strip()
        # A disambiguated prompt starts with the ambiguous context, then says who it was.
        entry = next(
            (v for (c, q), v in self.table.items() if q == question and context.startswith(c)), None
        )
        if entry is None:
            return [0.0 for _ in responses]
        favoured, unknown = entry
        return [2.0 if r == favoured else -2.0 if r == unknown else 0.0 for r in responses]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/score/{name}"

    def __enter__(self) -> RewardModels:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
