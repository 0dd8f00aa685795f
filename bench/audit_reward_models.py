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

import argparse
import json
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter
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


def main(argv: list[str] | None = None) -> int:
    """Ask both stand-in reward models about one ambiguous BBQ pair, as the audit does."""
    parser = argparse.ArgumentParser(description="Check the stand-in reward models answer as the audit expects.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the same single check (it is already quick)")
    parser.parse_args(argv)
    with RewardModels() as models:
        (context, question), (favoured, unknown) = next(iter(models.table.items()))
        body = {"messages": [{"role": "user", "content": f"{context}\n{question}"}], "responses": [favoured, unknown]}
        scores = {}
        for name in ("stereotyped", "longer"):
            request = urllib.request.Request(
                models.url(name), data=json.dumps(body).encode(), headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # loopback only
                scores[name] = json.loads(response.read())["scores"]
    print(f"| model | favoured | unknown |  ({len(models.table)} ambiguous contexts)\n|---|---:|---:|")
    for name, (first, second) in scores.items():
        print(f"| {name} | {first:+.2f} | {second:+.2f} |")
    return 0 if scores["stereotyped"][0] > scores["stereotyped"][1] else 1


if __name__ == "__main__":
    raise SystemExit(main())
