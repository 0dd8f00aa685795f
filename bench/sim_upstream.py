"""A simulated OpenAI-compatible upstream whose answer and utility distributions are KNOWN.

It stands in for a model, an LLM judge and reward models, so the proxy's risk estimates
(method §3) and strategies can be checked against exact truth (method §5).

The world
---------
A prompt names an item: ``Item 17 [scored] (trial 3, run noise): ...``. Per item (seeded from
``--seed``, the item id and the task) there are:

* ``discrete`` tasks: one sample is right with probability ``p_x ~ Beta(0.5, 2)`` (heavy near 0);
  wrong answers come from four item-specific wrong values with Dirichlet(1,1,1,1) shares.
  The candidate ends with ``The answer is N.`` (the proxy's answer extraction reads it).
  Utility ``U`` is 1 for the right answer, 0 otherwise.
* ``easy`` tasks: the same with ``p_x ~ Beta(2, 0.5)`` (heavy near 1), where voting can stop early.
* ``scored`` tasks: ``U ~ Beta(a_x, b_x)``, ``a_x ~ U(1.2, 5)``, ``b_x ~ U(1.5, 6)``. The text is a
  bag of item "key" words (``round(12 U)`` of them) plus filler, so text consensus (MBR) carries
  some signal about ``U``.

Prompt variants are recognized by the proxy's built-in rewrites (strategies/best_of_n/variants.py):
``step_by_step`` (+0.5), ``reread`` (−0.4), ``expert`` (+0.2), ``format_reminder`` (0), each plus an
item-level jitter N(0, 0.3); the shift is applied to ``logit p_x`` (discrete) or ``log a_x`` (scored).
So variants help on average, some hurt, and not on every item.

Every candidate starts with a hidden line ``[[sim u=U z=Z id=ID]]``: its true utility, a latent
"shared bias" ``z ~ N(0, 1)`` and a unique id. Simulated verifiers read it:

* ``POST /score?view=V&sigma=S&beta=B`` (the proxy's ``reward_model`` verifier, ``api: generic``):
  ``s = U + B·z + S·ε(id, V)`` with ``ε ~ N(0, 1)`` fixed per (candidate, view): one view each.
  Several reward_model verifiers with different ``view`` are independent views that share ``z``
  (method §5: ``s_iv = U_i + β·z_i + ε_iv``). Scores are returned raw; route them with
  ``squash: none`` (clipped to [0, 1] by the proxy).
* model ``judge-s<S>-p<P>-b<B>`` (an ``llm_judge`` upstream): pointwise ``Score: N`` / ``Verdict:
  yes|no`` / ``Rating: N`` from ``U + B·z + S·ε``; pairwise verdicts compare
  ``U_A + P + B·z_A + S·ε`` with ``U_B + B·z_B + S·ε'``: ``P`` is the position bias for slot A.

Sampling is reproducible ("common random numbers"): the j-th sample of (item, task, trial,
variant) is the same in every run tag, so two strategies see the same candidates in the same order
and their difference is only what they do with them. ``run`` only keys the counter.

Ground truth lives in `World` (exact REU by numerical integration of the Beta CDFs, exact for
0/1), used by bench/validate_risk.py and bench/compare_strategies.py.

Panels of models and fusers (bench/panel.py)
--------------------------------------------
A prompt ``Panel item 17 [clustered_within] (trial 0, run r): ...`` names an item of a panel world
(`PanelWorld`), and the request's ``model`` names the model that answers it: ``pm-<name>-p<P>``
(optionally ``-c<C>``) is model ``<name>``, right with probability ``P`` on every item. Answers are
five-digit numbers (``... The answer is 48213.``), never one of the question's own numbers. A
wrong answer depends on the world (written in the prompt):

* ``independent``: a value drawn uniformly from 90,000, so wrong answers almost never agree;
* ``clustered_within``: with probability ``C`` (default 1) the model's own wrong value for the item
  (one per item and model, different models' differ), else uniform;
* ``clustered_shared``: with probability ``C`` the item's one wrong value, the same for every model.

The j-th sample of (item, trial, model) is right or wrong by the same draw in every world and run
tag (common random numbers); which wrong value it says depends on the world.

Fusers read the fusion prompt (strategies/selection/fusion.py): the question, then ``Candidate k:``
blocks. ``fuser-copy`` copies the answer that appears most among those shown (the first shown
on a tie: the proxy shows one representative per cluster, so that is the first shown);
``fuser-correct-q<Q>-r<R>`` (defaults Q=0.9, R=0.1) answers right with probability Q when the
right answer is among those shown and R when it is not, and otherwise copies, by a draw fixed per
(item, trial, fuser). ``-t<T>`` on either name makes every word of the answer take T seconds after
the first (its time to first token is ``--latency``), streamed (``stream: true``, usage in the
last chunk with ``stream_options.include_usage``) or not. Any model streams when asked.

    python bench/sim_upstream.py --port 9200 --latency 0.2     # prints "READY <port>"
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import Child, HelpFormatter, run_server, start_proxy, start_server_script

VARIANT_SHIFT = {"original": 0.0, "step_by_step": 0.5, "reread": -0.4, "expert": 0.2, "format_reminder": 0.0}
VARIANT_JITTER = 0.3
VARIANT_CODE = {name: i for i, name in enumerate(VARIANT_SHIFT)}
TASK_CODE = {"discrete": 1, "scored": 2, "easy": 3}
DISCRETE = ("discrete", "easy")  # 0/1 utilities; "easy" has p_x ~ Beta(2, 0.5), heavy near 1
KEY_WORDS = 12
FILLER = [f"w{i}" for i in range(200)]
ITEM_RE = re.compile(r"Item (\d+) \[(\w+)\] \(trial (\d+), run ([\w.-]+)\)")
MARKER_RE = re.compile(r"\[\[sim u=([-\d.]+) z=([-\d.e]+) id=([0-9a-f]+)\]\]")
GRID = np.linspace(0.0, 1.0, 4001)
PANEL_WORLDS = ("independent", "clustered_within", "clustered_shared")
PANEL_RE = re.compile(r"Panel item (\d+) \[(\w+)\] \(trial (\d+), run ([\w.-]+)\)")
PANEL_MODEL_RE = re.compile(r"^pm-([A-Za-z0-9_]+)-p([\d.]+)(?:-c([\d.]+))?$")
FUSER_RE = re.compile(r"^fuser-(copy|correct)((?:-[qrt][\d.]+)*)$")
ANSWER_RE = re.compile(r"[Tt]he answer is (\d+)")
ANSWER_BLOCK_RE = re.compile(r"(?:^|\n)Candidate (\d+):\n")
VALUE_LOW, VALUE_HIGH = 10_000, 100_000  # panel answers: five digits, above any item id or trial


def prompt(item: int, task: str, trial: int = 0, run: str = "r") -> str:
    """The user message that names an item."""
    return f"Item {item} [{task}] (trial {trial}, run {run}): solve the task."


def detect_variant(messages: list[dict[str, Any]]) -> str:
    text = " ".join(_content(m.get("content")) for m in messages)
    if "Read the question again" in text:
        return "reread"
    if "think step by step" in text:
        return "step_by_step"
    if "world-class expert" in text:
        return "expert"
    if "final line of the form" in text:
        return "format_reminder"
    return "original"


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def parse_marker(text: str) -> tuple[float, float, str] | None:
    found = MARKER_RE.search(text or "")
    if not found:
        return None
    return float(found.group(1)), float(found.group(2)), found.group(3)


def unit_normal(*key: Any) -> float:
    """A deterministic N(0, 1) draw for a key (noise of one view on one candidate)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=16).digest()
    u1 = (int.from_bytes(digest[:8], "little") + 0.5) / 2**64
    u2 = (int.from_bytes(digest[8:], "little") + 0.5) / 2**64
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- the world and its ground truth ---------------------------------------------------------


@dataclass(frozen=True)
class Item:
    item: int
    task: str
    # discrete
    p: dict[str, float]
    right: int
    wrong: tuple[int, ...]
    wrong_p: tuple[float, ...]
    # scored
    a: dict[str, float]
    b: float


class World:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @lru_cache(maxsize=None)  # noqa: B019 - a World lives for the whole run
    def item(self, item: int, task: str) -> Item:
        rng = np.random.default_rng([self.seed, item, TASK_CODE[task]])
        p0 = float(np.clip(rng.beta(2.0, 0.5) if task == "easy" else rng.beta(0.5, 2.0), 1e-4, 1 - 1e-4))
        a0, b0 = float(rng.uniform(1.2, 5.0)), float(rng.uniform(1.5, 6.0))
        jitter = {v: (0.0 if v == "original" else float(rng.normal(0.0, VARIANT_JITTER))) for v in VARIANT_SHIFT}
        p = {v: _sigmoid(math.log(p0 / (1 - p0)) + VARIANT_SHIFT[v] + jitter[v]) for v in VARIANT_SHIFT}
        a = {v: a0 * math.exp(VARIANT_SHIFT[v] + jitter[v]) for v in VARIANT_SHIFT}
        values = rng.choice(np.arange(2, 999), size=5, replace=False)
        wrong_p = rng.dirichlet(np.ones(4))
        return Item(item, task, p, int(values[0]), tuple(int(v) for v in values[1:]),
                    tuple(float(w) for w in wrong_p), a, b0)

    # -- sampling (used by the server) --

    def sample(self, item: int, task: str, trial: int, variant: str, j: int) -> tuple[str, float, float]:
        """The j-th sample of (item, task, trial, variant): text, true U, shared-bias z."""
        it = self.item(item, task)
        rng = np.random.default_rng([self.seed, item, TASK_CODE[task], trial, VARIANT_CODE[variant], j, 7])
        z = float(rng.normal())
        ident = hashlib.blake2b(repr((self.seed, item, task, trial, variant, j)).encode(), digest_size=6).hexdigest()
        if task in DISCRETE:
            right = rng.random() < it.p[variant]
            answer = it.right if right else int(rng.choice(it.wrong, p=it.wrong_p))
            u = 1.0 if right else 0.0
            body = f"Let me work through item {item}. The answer is {answer}."
        else:
            u = float(rng.beta(it.a[variant], it.b))
            keys = round(KEY_WORDS * u)
            words = [f"k{item}x{i}" for i in range(keys)] + list(rng.choice(FILLER, size=KEY_WORDS - keys))
            body = "Draft: " + " ".join(words) + "."
        return f"[[sim u={u:.6f} z={z:.6f} id={ident}]]\n{body}", u, z

    # -- truth --

    def aeu(self, item: int, task: str, variant: str = "original") -> float:
        it = self.item(item, task)
        if task in DISCRETE:
            return it.p[variant]
        return it.a[variant] / (it.a[variant] + it.b)

    @lru_cache(maxsize=None)  # noqa: B019
    def _cdf(self, item: int, task: str, variant: str) -> np.ndarray:
        from scipy.stats import beta

        it = self.item(item, task)
        return beta.cdf(GRID, it.a[variant], it.b)

    def reu(self, item: int, task: str, counts: dict[str, int]) -> float:
        """Exact expected best utility of a draw with `counts[v]` samples from each variant v."""
        counts = {v: k for v, k in counts.items() if k > 0}
        if task in DISCRETE:
            it = self.item(item, task)
            return 1.0 - math.prod((1.0 - it.p[v]) ** k for v, k in counts.items())
        all_below = np.ones_like(GRID)
        for v, k in counts.items():
            all_below = all_below * self._cdf(item, task, v) ** k
        return float(np.trapezoid(1.0 - all_below, GRID))

    def reu_subset(self, item: int, task: str, pool: dict[str, int], m: int) -> float:
        """Expected best of m candidates drawn without replacement from a pool with these variant
        counts (what Ê_m of pooled candidates estimates): a multivariate hypergeometric mix."""
        names = [v for v, k in pool.items() if k > 0]
        total = sum(pool[v] for v in names)
        value = 0.0
        for combo in itertools.product(*(range(min(pool[v], m) + 1) for v in names)):
            if sum(combo) != m:
                continue
            weight = math.prod(math.comb(pool[v], c) for v, c in zip(names, combo)) / math.comb(total, m)
            value += weight * self.reu(item, task, dict(zip(names, combo)))
        return value


def round_robin(variants: list[str], n: int) -> dict[str, int]:
    counts = dict.fromkeys(variants, 0)
    for i in range(n):
        counts[variants[i % len(variants)]] += 1
    return counts


# --- panels of models: known accuracy and error correlation ---------------------------------


def panel_prompt(item: int, world: str, trial: int = 0, run: str = "r") -> str:
    """The user message that names an item of a panel world."""
    if not 0 <= item < VALUE_LOW:
        raise ValueError(f"panel items are 0..{VALUE_LOW - 1}: an answer must never be a number of the question")
    return f"Panel item {item} [{world}] (trial {trial}, run {run}): what is the item's value?"


def _code(name: str) -> int:
    """A stable integer for a name (a model's, a world's), for seeding."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")


@dataclass(frozen=True)
class PanelModel:
    name: str
    p: float  # P(right) of every sample on every item
    concentration: float = 1.0  # clustered worlds: P(a wrong answer is the clustered wrong value)

    @property
    def model(self) -> str:
        """The request's `model` that asks this one."""
        suffix = "" if self.concentration == 1.0 else f"-c{self.concentration:g}"
        return f"pm-{self.name}-p{self.p:g}{suffix}"

    @classmethod
    def parse(cls, model: str) -> PanelModel | None:
        found = PANEL_MODEL_RE.match(model)
        if not found:
            return None
        return cls(found.group(1), float(found.group(2)), float(found.group(3)) if found.group(3) else 1.0)


@dataclass(frozen=True)
class Fuser:
    kind: str  # copy | correct
    q: float = 0.9  # correct: P(right) when the right answer is among those shown
    r: float = 0.1  # correct: P(right) when it is not
    token_s: float = 0.0  # seconds per word after the first

    @classmethod
    def parse(cls, model: str) -> Fuser | None:
        found = FUSER_RE.match(model)
        if not found:
            return None
        params = {k: float(v) for k, v in re.findall(r"-([qrt])([\d.]+)", found.group(2))}
        return cls(found.group(1), params.get("q", 0.9), params.get("r", 0.1), params.get("t", 0.0))


class PanelWorld:
    """Items with one right five-digit value each, and per world, where wrong answers fall."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def right(self, item: int) -> int:
        return int(np.random.default_rng([self.seed, item, 101]).integers(VALUE_LOW, VALUE_HIGH))

    def _other(self, rng: np.random.Generator, item: int) -> int:
        """A uniform wrong value."""
        right = self.right(item)
        value = int(rng.integers(VALUE_LOW, VALUE_HIGH - 1))
        return value + 1 if value >= right else value

    def shared_wrong(self, item: int) -> int:
        return self._other(np.random.default_rng([self.seed, item, 102]), item)

    def own_wrong(self, item: int, model: str) -> int:
        """Model `model`'s wrong value for the item (clustered_within): never the right one, and
        never the shared one; two models' coincide with probability about 1/90,000."""
        rng = np.random.default_rng([self.seed, item, 103, _code(model)])
        value = self._other(rng, item)
        while value == self.shared_wrong(item):
            value = self._other(rng, item)
        return value

    def answer(self, item: int, world: str, trial: int, model: PanelModel, j: int) -> int:
        """The j-th sample's answer. Right or wrong by a draw that no world or run tag changes."""
        if world not in PANEL_WORLDS:
            raise ValueError(f"unknown panel world {world!r}")
        rng = np.random.default_rng([self.seed, item, 104, trial, _code(model.name), j])
        if rng.random() < model.p:
            return self.right(item)
        clustered = rng.random() < model.concentration
        uniform = self._other(np.random.default_rng([self.seed, item, 105, trial, _code(model.name), j,
                                                     PANEL_WORLDS.index(world)]), item)
        if world == "clustered_within" and clustered:
            return self.own_wrong(item, model.name)
        if world == "clustered_shared" and clustered:
            return self.shared_wrong(item)
        return uniform

    def fuse(self, item: int, world: str, trial: int, fuser: Fuser, shown: list[int | None]) -> int | None:
        """What `fuser` answers having read `shown` (the answers in the order shown; None where a
        block had none)."""
        present = [a for a in shown if a is not None]
        if not present:
            return None
        counts: dict[int, int] = {}
        for a in present:
            counts[a] = counts.get(a, 0) + 1
        copied = max(present, key=lambda a: (counts[a], -present.index(a)))  # most shown, then first
        if fuser.kind == "copy":
            return copied
        key = [self.seed, item, 106, trial, PANEL_WORLDS.index(world), _code(fuser.kind)]
        draw = np.random.default_rng(key).random()
        right = self.right(item)
        return right if draw < (fuser.q if right in present else fuser.r) else copied


def panel_text(item: int, answer: int) -> str:
    return f"Working through item {item} step by step, checking each part. The answer is {answer}."


def fused_text(answer: int | None) -> str:
    if answer is None:
        return "None of the answers shown gives a value, so I cannot say."
    return ("I read every answer, checked each one against the request and kept what holds up; "
            f"after that check the single best answer is clear. The answer is {answer}.")


def shown_blocks(text: str) -> list[str]:
    """The `Candidate k:` blocks of a fusion prompt, in order (the text after the last runs on into
    the instruction, which holds no answer)."""
    heads = list(ANSWER_BLOCK_RE.finditer(text))
    return [text[h.end():(heads[i + 1].start() if i + 1 < len(heads) else len(text))] for i, h in enumerate(heads)]


def answer_in(text: str) -> int | None:
    found = ANSWER_RE.findall(text or "")
    return int(found[-1]) if found else None


# --- the HTTP server ------------------------------------------------------------------------


class Sim:
    def __init__(self, world: World, latency: float, score_latency: float, judge_latency: float) -> None:
        self.world = world
        self.panel = PanelWorld(world.seed)
        self.latency = latency
        self.score_latency = score_latency
        self.judge_latency = judge_latency
        self.counters: dict[tuple[Any, ...], int] = defaultdict(int)
        self.calls = defaultdict(int)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or [{"role": "user", "content": body.get("prompt", "")}]
        model = str(body.get("model", ""))
        n = int(body.get("n") or 1)
        panelist, fuser = PanelModel.parse(model), Fuser.parse(model)
        if model.startswith("judge"):
            texts = [self.judge(model, messages)]
        elif panelist is not None:
            texts = self.panel_candidates(panelist, messages, n)
        elif fuser is not None:
            texts = [self.fused(fuser, messages)] * n
        else:
            texts = self.candidates(messages, n)
        prompt_tokens = sum(len(_content(m.get("content")).split()) for m in messages)
        completion_tokens = sum(len(t.split()) for t in texts)
        return {
            "id": f"chatcmpl-sim{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop",
                         "logprobs": None} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def candidates(self, messages: list[dict[str, Any]], n: int) -> list[str]:
        text = " ".join(_content(m.get("content")) for m in messages)
        found = ITEM_RE.search(text)
        if not found:
            return ["I do not know which item this is."] * n
        item, task, trial, run = int(found.group(1)), found.group(2), int(found.group(3)), found.group(4)
        variant = detect_variant(messages)
        key = (item, task, trial, variant, run)
        start = self.counters[key]
        self.counters[key] += n
        self.calls["generate"] += 1
        return [self.world.sample(item, task, trial, variant, j)[0] for j in range(start, start + n)]

    def panel_candidates(self, model: PanelModel, messages: list[dict[str, Any]], n: int) -> list[str]:
        text = " ".join(_content(m.get("content")) for m in messages)
        found = PANEL_RE.search(text)
        if not found:
            return ["I do not know which item this is."] * n
        item, world, trial, run = int(found.group(1)), found.group(2), int(found.group(3)), found.group(4)
        key = ("panel", item, world, trial, run, model.name)
        start = self.counters[key]
        self.counters[key] += n
        self.calls["panel"] += 1
        self.calls[f"panel:{model.name}"] += n
        return [panel_text(item, self.panel.answer(item, world, trial, model, j)) for j in range(start, start + n)]

    def fused(self, fuser: Fuser, messages: list[dict[str, Any]]) -> str:
        last = _content(messages[-1].get("content")) if messages else ""
        found = PANEL_RE.search(last)
        self.calls["fuse"] += 1
        if not found:
            return "I do not know which item this is."
        item, world, trial = int(found.group(1)), found.group(2), int(found.group(3))
        shown = [answer_in(block) for block in shown_blocks(last)]
        self.calls[f"fuse_shown_{len(shown)}"] += 1
        return fused_text(self.panel.fuse(item, world, trial, fuser, shown))

    def judge(self, model: str, messages: list[dict[str, Any]]) -> str:
        params = dict(re.findall(r"-([spb])([\d.]+)", model))
        sigma, pos, beta = (float(params.get(k, 0.0)) for k in ("s", "p", "b"))
        text = "\n".join(_content(m.get("content")) for m in messages)
        self.calls["judge"] += 1
        if "# Response A" in text:
            a_part = text.split("# Response A", 1)[1].split("# Response B", 1)[0]
            b_part = text.split("# Response B", 1)[1]
            ma, mb = parse_marker(a_part), parse_marker(b_part)
            if ma is None or mb is None:
                return "Verdict: tie"
            sa = ma[0] + pos + beta * ma[1] + sigma * unit_normal("pair", ma[2], mb[2], "A")
            sb = mb[0] + beta * mb[1] + sigma * unit_normal("pair", ma[2], mb[2], "B")
            if abs(sa - sb) < 0.02:
                return "Both are similar.\nVerdict: tie"
            return f"Comparing.\nVerdict: {'A' if sa > sb else 'B'}"
        graded = text.split("# Response to grade", 1)[-1]
        mark = parse_marker(graded)
        if mark is None:
            return "I cannot grade this."
        u, z, ident = mark
        if "Verdict: yes" in text:
            s = u + beta * z + sigma * unit_normal("yesno", ident)
            return f"Checked.\nVerdict: {'yes' if s > 0.5 else 'no'}"
        s = min(1.0, max(0.0, u + beta * z + sigma * unit_normal("point", ident)))
        if "Rating:" in text:
            return f"Graded.\nRating: {round(1 + 4 * s)}"
        return f"Graded.\nScore: {round(1 + 9 * s)}"

    def score(self, query: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        view = query.get("view", "0")
        sigma, beta = float(query.get("sigma", 0.0)), float(query.get("beta", 0.0))
        scores: list[float | None] = []
        for response in body.get("responses") or []:
            mark = parse_marker(str(response))
            if mark is None:
                scores.append(None)
                continue
            u, z, ident = mark
            scores.append(u + beta * z + sigma * unit_normal("view", view, ident))
        self.calls["score"] += 1
        return {"scores": scores, "usage": {"prompt_tokens": 0}}


def build_app(sim: Sim) -> Any:
    from aiohttp import web

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model", ""))
        fuser = Fuser.parse(model)
        token_s = fuser.token_s if fuser is not None else 0.0
        await asyncio.sleep(sim.judge_latency if model.startswith("judge") else sim.latency)
        completion = sim.completion(body)
        if not body.get("stream"):
            words = max((len(c["message"]["content"].split()) for c in completion["choices"]), default=0)
            if token_s and words > 1:
                await asyncio.sleep(token_s * (words - 1))
            return web.json_response(completion)
        return await stream(request, body, completion, token_s)

    async def stream(request: web.Request, body: dict[str, Any], completion: dict[str, Any],
                     token_s: float) -> web.StreamResponse:
        """The completion as OpenAI streams it: the role, a piece per word (`token_s` apart), the
        finish reason, and usage in a last chunk when the client asked for it."""
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
                "model": completion["model"]}

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode())

        choices = completion["choices"]
        await send([{"index": c["index"], "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                     "logprobs": None} for c in choices])
        pieces = [re.findall(r"\S+\s*", c["message"]["content"]) for c in choices]
        for step in range(max((len(p) for p in pieces), default=0)):
            if step and token_s:
                await asyncio.sleep(token_s)
            await send([{"index": c["index"], "delta": {"content": p[step]}, "finish_reason": None, "logprobs": None}
                        for c, p in zip(choices, pieces, strict=True) if step < len(p)])
        await send([{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"], "logprobs": None}
                    for c in choices])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=completion["usage"])
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def score(request: web.Request) -> web.Response:
        body = await request.json()
        if sim.score_latency:
            await asyncio.sleep(sim.score_latency)
        return web.json_response(sim.score(dict(request.query), body))

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim", "object": "model", "created": 0,
                                                              "owned_by": "sim"}]})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(sim.calls))

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    app.router.add_post("/score", score)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    return app


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    sim = Sim(World(args.seed), args.latency, args.score_latency, args.judge_latency)
    runner = web.AppRunner(build_app(sim), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=2048, reuse_address=True)  # aiohttp sets TCP_NODELAY
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per generation call (served in parallel)")
    parser.add_argument("--score-latency", type=float, default=0.02, help="seconds per /score call")
    parser.add_argument("--judge-latency", type=float, default=0.05, help="seconds per judge call")
    args = parser.parse_args()
    run_server(serve(args))


# --- helpers for the bench drivers: start the sim and the real proxy as child processes ------


def start_sim(workdir: Path, seed: int, latency: float, score_latency: float = 0.02,
              judge_latency: float = 0.05) -> tuple[Child, str]:
    """This server as a child process; returns it and its base URL (no /v1)."""
    return start_server_script("sim", "sim_upstream.py", ["--seed", str(seed), "--latency", str(latency),
                                                          "--score-latency", str(score_latency),
                                                          "--judge-latency", str(judge_latency)], workdir)


@contextmanager
def sim_and_proxy(workdir: Path, seed: int, latency: float,
                  config: Callable[[str], dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """The sim, then the real proxy on `config(sim_base)`; yields both base URLs, stops both."""
    sim, sim_base = start_sim(workdir, seed, latency)
    proxy: Child | None = None
    try:
        proxy, proxy_base = start_proxy(workdir, config(sim_base), env={"SIM_KEY": "sk-sim"})
        yield sim_base, proxy_base
    except BaseException:
        if proxy is not None:
            print(proxy.log_tail(), file=sys.stderr)
        raise
    finally:
        if proxy is not None:
            proxy.stop()
        sim.stop()


def upstream(name: str, base: str, model: str | None = None, **extra: Any) -> dict[str, Any]:
    """A proxy `upstreams` entry pointing at the sim."""
    return {"name": name, "litellm_params": {"model": f"openai/{model or name}", "api_base": f"{base}/v1",
                                             "api_key": "os.environ/SIM_KEY"},
            "retries": 0, "max_concurrency": 1024, **extra}


def reward_views(base: str, count: int, sigma: float, beta: float = 0.0, prefix: str = "rm") -> list[dict[str, Any]]:
    """`count` reward_model verifiers on the sim's /score: independent views sharing z."""
    return [{"type": "reward_model", "name": f"{prefix}{v}", "squash": "none",
             "endpoint": {"url": f"{base}/score?view={prefix}{v}&sigma={sigma}&beta={beta}", "api": "generic"}}
            for v in range(count)]


if __name__ == "__main__":
    main()
