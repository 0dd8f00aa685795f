"""Fusion: a fuser model writes the answer from the top answer clusters (method §10.8).

Selection can only serve an answer some candidate wrote; a fuser reads the strongest distinct
answers and may combine or correct them. It sees them anonymized (no model, variant or score) and
in shuffled order, because judges prefer positions and names they recognize; it sees one
representative per cluster, so a large cluster is one voice, not many. Whether fusion beats
selection is measured, not assumed: gold probes fuse each item's reference candidates and score
fused against selected on the same item (`FusionGain`), and `when: measured_better` fuses only
while the paired interval's lower bound is above zero.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from strategies.answers import answer_key, question_of
from strategies.best_of_n.adapt import Paired, paired
from strategies.best_of_n.counts import Clock, EpochCounts
from strategies.contract import (
    FUSION_VARIANT,
    Candidate,
    Message,
    Scored,
    VerifyContext,
    content_text,
    failure_cause,
)
from strategies.selection.settings import FUSION_PLACEHOLDER, FuserSpec, FusionSettings
from strategies.selection.similarity import token_f1_matrix
from strategies.verifiers.base import BaseVerifier

QUESTION_PLACEHOLDER = "{question}"
# "Candidate 1:", not "Answer 1:": a chat rendered for a base model ends in "Answer:", and a list
# of "Answer k:" blocks before it reads as a list to continue (the embedded Gemma wrote "Answer 5:
# ..." in 51 of 192 fused answers).
SHOWN_LABEL = "Candidate"
_PLACEHOLDERS = re.compile(re.escape(QUESTION_PLACEHOLDER) + "|" + re.escape(FUSION_PLACEHOLDER))
DEFAULT_TEMPLATE = (
    "{question}\n\n"
    "Several answers to the request above were written independently. Some may be wrong, and "
    "agreeing with each other does not make them right.\n\n"
    "{answers}\n\n"
    "Write the single best answer to the request. Check each candidate; keep what is right, correct "
    "what is wrong, and do not mention the candidates. Answer in the form the request asks for."
)


def fusion_messages(messages: Sequence[Message], answers: Sequence[str], template: str | None) -> list[Message]:
    """The fuser's conversation: the client's, with its last user turn replaced by the template
    filled with that turn and the answers. Plain replacement, not `str.format`: answers and
    questions carry braces (code, JSON)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    question = content_text(messages[last_user].get("content"), mark_attachments=True) if last_user >= 0 else ""
    listed = "\n\n".join(f"{SHOWN_LABEL} {i + 1}:\n{text}" for i, text in enumerate(answers))
    # One pass, so a question that itself says "{answers}" is never filled in.
    fills = {QUESTION_PLACEHOLDER: question, FUSION_PLACEHOLDER: listed}
    filled = _PLACEHOLDERS.sub(lambda found: fills[found.group(0)], template or DEFAULT_TEMPLATE)
    head = [dict(m) for m in messages[:last_user]] if last_user >= 0 else [dict(m) for m in messages]
    return [*head, {"role": "user", "content": filled}]


def shown_answers(candidates: Sequence[Candidate], ranked: Sequence[int], top_k: int) -> list[int]:
    """Which representatives the fuser reads, in the order it reads them: the `top_k` best
    clusters' (`ranked`, best first), shuffled so the best is not always first. The shuffle is
    seeded by the answers themselves: the same answers are always shown in the same order, so a
    fused answer can be reproduced, and still the strongest is first only by chance."""
    shown = [i for i in ranked if not candidates[i].tool_calls][:top_k]
    texts = "\x00".join(sorted(candidates[i].text for i in shown)).encode("utf-8", "replace")
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(texts).digest()[:8], "little"))
    order = rng.permutation(len(shown))
    return [shown[j] for j in order]


def fused_candidate(index: int, text: str, finish_reason: str | None, fuser: str,
                    response_fields: dict[str, Any] | None = None) -> Candidate:
    return Candidate(index, FUSION_VARIANT, {"role": "assistant", "content": text}, finish_reason,
                     response_fields=response_fields or {}, upstream=fuser)


# ---- measured on gold ------------------------------------------------------------------------


FUSED, SELECTED = 1, 0  # rows of the table `paired` compares


class FusionGain:
    """Per probe item, the gold utility of the fused and of the selected answer (sums and counts
    in shared time buckets, as `strategies.best_of_n.adapt.GainCurve` keeps its curve)."""

    def __init__(self, settings: FusionSettings, clock: Clock = time.time) -> None:
        self.settings = settings
        self.counts = EpochCounts(settings.window_s, clock)
        self._cached: tuple[int, Paired | None] | None = None

    def add(self, item: str, fused: float, selected: float) -> None:
        self.counts.add(f"fused|{item}", fused)
        self.counts.add(f"selected|{item}", selected)
        self.counts.add(f"count|{item}", 1.0)

    def table(self) -> dict[int, dict[str, float]]:
        totals = self.counts.totals()
        out: dict[int, dict[str, float]] = {FUSED: {}, SELECTED: {}}
        for field, count in totals.items():
            kind, _, item = field.partition("|")
            if kind != "count" or count <= 0:
                continue
            out[FUSED][item] = totals.get(f"fused|{item}", 0.0) / count
            out[SELECTED][item] = totals.get(f"selected|{item}", 0.0) / count
        return out

    def gain(self) -> Paired | None:
        """Fused minus selected gold utility, paired by probe item (90% interval); None below
        `min_items` items. Cached until new gold arrives."""
        version = self.counts.version
        if self._cached is not None and self._cached[0] == version:
            return self._cached[1]
        table = self.table()
        items = set(table[FUSED])
        result = paired(table, FUSED, SELECTED, items) if len(items) >= self.settings.min_items else None
        self._cached = (version, result)
        return result

    def fuses(self) -> tuple[bool, str | None]:
        """Whether requests fuse now, and if not, why."""
        if self.settings.when == "always":
            return True, None
        gain = self.gain()
        if gain is None:
            return False, f"fusion waits for {self.settings.min_items} gold items measuring it against selection"
        if gain.low <= 0:
            return False, f"gold does not show fusion beating selection (90% interval low {gain.low:+.3f})"
        return True, None


# ---- audited like a judge --------------------------------------------------------------------


class FuserJudge(BaseVerifier):
    """The fuser as `rvr-proxy audit` measures a judge: shown a gold pair's two answers as it is
    shown clusters (the audit shows both orders), its answer "prefers" the one it agrees with:
    the same extracted answer, else the larger token overlap (long-form answers have no key);
    an even overlap is a tie.
    A fuser that sides with the undesirable answer, or with whichever comes first, is flagged
    as a judge would be, and `selection.fusion.audit.require` holds the route back."""

    kind = "fuser"
    auditable = True
    Settings = FuserSpec

    async def score(self, ctx: VerifyContext, candidates: Sequence[Candidate]) -> Scored:
        spec = self.settings
        assert isinstance(spec, FuserSpec)
        messages = fusion_messages(ctx.messages, [c.text for c in candidates], spec.template)
        try:
            reply = await ctx.services.chat(spec.fuser, messages)
        except Exception as exc:  # noqa: BLE001 - a failed call scores nothing, never 0
            return Scored({self.name: [None] * len(candidates)}, errors=1, cause=failure_cause(exc))
        question = question_of(ctx.messages)
        fused = Candidate(-1, FUSION_VARIANT, {"role": "assistant", "content": reply.text})
        key = answer_key(fused, question=question)
        keys = [answer_key(c, question=question) for c in candidates]
        if key is not None and key in keys:
            agreement = [1.0 if k == key else 0.0 for k in keys]
        else:
            agreement = [float(v) for v in token_f1_matrix([reply.text, *(c.text for c in candidates)])[0, 1:]]
        # A verdict, as a pairwise judge gives one: the answer it sides with, not a degree of
        # overlap, which would let long answers' word counts decide a pair's average over orders.
        best = max(agreement)
        sided = [a == best for a in agreement]
        scores: list[float | None] = [(1.0 / sum(sided)) if s else 0.0 for s in sided]
        return Scored({self.name: scores}, reply.usage)
