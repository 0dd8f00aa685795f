"""Fusion on a best_of_n route (method §10.8): after the loop has chosen, a fuser writes the
answer from the strongest distinct answers, and gold probes measure whether that beats selection.

`Fuser` is built once per route that has `selection.fusion`; `fuse` runs once per request on the
loop's `Run` (strategies/best_of_n/run.py) and its outcome, `measure` once per gold probe item.
The prompt, what the fuser is shown, the gold gain and the fuser's audit as a judge are in
strategies/selection/fusion.py; this module is their use in a request.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from strategies.answers import answer_type
from strategies.best_of_n import adapt
from strategies.best_of_n.run import AnswerOf, Clock, Plan, Run, verify, view_scores
from strategies.contract import (
    BudgetExhausted,
    Candidate,
    FusionStream,
    Message,
    Outcome,
    Services,
    StrategyRequest,
    StreamEnd,
    VerifyContext,
    failure_cause,
)
from strategies.selection.choice import Choice, ranked_clusters
from strategies.selection.fusion import FusionGain, fused_candidate, fusion_messages, shown_answers
from strategies.selection.settings import FusionSettings
from strategies.selection.weighted import Selection, select

Chooser = Callable[[Run, Selection], "tuple[Selection, Choice]"]


class Fuser:
    """A route's fusion: its settings, its gold gain (`gain`, shared by processes as the route's
    `fusion` counts), and what it needs of the route: the answer keys of a request (`key_of`),
    the route's selection (`choose`), a plain plan (`plan`), its variants and its `max_n`."""

    def __init__(
        self, settings: FusionSettings, *, key_of: Callable[[Sequence[Message]], AnswerOf],
        choose: Chooser, plan: Callable[[], Plan], variants: Sequence[str], max_n: int, clock: Clock,
    ) -> None:
        self.settings = settings
        self.gain = FusionGain(settings)
        self._key_of = key_of
        self._choose = choose
        self._plan = plan
        self._variants = list(variants)
        self._max_n = max_n
        self._clock = clock

    async def fuse(
        self, request: StrategyRequest, run: Run, plan: Plan, choice: Choice, selection: Selection,
        ctx: VerifyContext, outcome: Outcome,
    ) -> Outcome:
        """The fuser's answer from the strongest distinct answers (strategies/selection/fusion.py),
        scored by the route's verifiers like a candidate and served in place of the selected one;
        the selected one where fusion does not run or the fuser fails. A streaming client gets
        a `fusion_stream` to relay instead, which completes the outcome when it ends."""
        fusion = self.settings
        gain = self.gain.gain()
        report: dict[str, Any] = {
            "fuser": fusion.fuser, "fused": False,
            "gain": None if gain is None else {
                "estimate": gain.estimate, "ci90": [gain.low, gain.high], "items": gain.items,
            },
        }
        outcome.fusion = report
        shown = _fusion_inputs(choice, selection, run.candidates, fusion.top_k)
        skipped = self._skipped(request, outcome, len(shown))
        if skipped is not None:
            report["skipped"] = skipped
            return outcome
        report.update(shown=shown, answers=len(shown), selected_candidate=outcome.selected)
        messages = fusion_messages(request.messages, [run.candidates[i].text for i in shown], fusion.template)
        if request.stream:
            ended: list[str | None] = []  # the fuser's finish_reason, once its stream ends

            async def pieces() -> AsyncIterator[str]:
                since = run.clock()
                try:  # aclosing: closing these pieces closes the upstream stream at once
                    async with contextlib.aclosing(run.services.chat_stream(fusion.fuser, messages)) as stream:
                        async for piece in stream:
                            if isinstance(piece, StreamEnd):
                                run.usage += piece.usage
                                ended.append(piece.finish_reason)
                            else:
                                yield piece
                finally:
                    run.time("fuse", since)

            async def finish(text: str | None, error: BaseException | None) -> Outcome:
                if text is None:
                    return _fusion_failed(outcome, run, _cause(error))
                return await self._with_fused(run, plan, ctx, outcome, text, ended[0] if ended else None, {})

            outcome.fusion_stream = FusionStream(pieces(), finish)
            return outcome
        since = run.clock()
        try:
            batch = await run.services.generate(messages, 1, fusion.fuser)
        except Exception as exc:  # noqa: BLE001 - a failed fuser leaves the selected answer standing
            run.time("fuse", since)
            return _fusion_failed(outcome, run, _cause(exc))
        run.usage += batch.usage
        run.time("fuse", since)
        text = Candidate(-1, "", batch.samples[0].message).text if batch.samples else ""
        unusable = self._unusable(run.messages, outcome.chosen, text)
        if unusable is not None:
            return _fusion_failed(outcome, run, unusable)
        sample = batch.samples[0]
        return await self._with_fused(run, plan, ctx, outcome, text, sample.finish_reason, sample.response_fields)

    def _unusable(self, messages: Sequence[Message], selected: Candidate, text: str) -> str | None:
        """Why a fused answer must not replace the selected one: it is empty, or the route can read
        an answer in the selected candidate and none in it (a 270M fuser wrote both, 15 and 41 of
        192 times, and served in place of right answers). A streamed one is already sent."""
        if not text.strip():
            return "it wrote an empty answer"
        key_of = self._key_of(messages)
        if key_of(selected) is not None and key_of(fused_candidate(-1, text, None, "")) is None:
            return "its answer holds none the route can read, where the selected one does"
        return None

    def _skipped(self, request: StrategyRequest, outcome: Outcome, answers: int) -> str | None:
        """Why this request is not fused, or None."""
        fusion = self.settings
        fuses, why = self.gain.fuses()
        if not fuses:
            return why
        if request.n > 1:
            return "the client asked for n > 1 answers; fusion writes one"
        if outcome.chosen.tool_calls:
            return "tool-call answers are never fused"
        if answers < fusion.min_clusters:
            return f"{answers} distinct answer(s), fewer than min_clusters {fusion.min_clusters}"
        return None

    async def _with_fused(
        self, run: Run, plan: Plan, ctx: VerifyContext, outcome: Outcome, text: str,
        finish_reason: str | None, response_fields: dict[str, Any],
    ) -> Outcome:
        """The outcome serving the fused answer, scored by the route's verifiers beside the
        candidates it was written from."""
        fusion = self.settings
        assert outcome.fusion is not None
        fused = fused_candidate(len(run.candidates), text, finish_reason, fusion.fuser, response_fields)
        selected = run.candidates[outcome.selected]
        run.candidates.append(fused)  # the outcome's candidates are the run's
        results = await verify(run, plan, ctx)
        rescored = select(run.candidates, results)
        key_of = self._key_of(run.messages)
        key = key_of(fused)
        outcome.scores = rescored.utility_list()
        outcome.view_scores = view_scores(results, len(run.candidates))
        outcome.answer_types.append(answer_type(key or ""))
        outcome.fusion.update(fused=True, score=outcome.scores[-1], agrees=key is not None and key == key_of(selected))
        outcome.selected = fused.index
        if outcome.selection is not None:
            outcome.selection["rule"] = "fusion"
            outcome.selection["why"] = (
                f"{fusion.fuser} wrote the answer from {outcome.fusion['answers']} distinct answers; "
                f"the selection's own choice was candidate {outcome.fusion['selected_candidate']}"
            )
        outcome.usage = run.usage
        outcome.timings = dict(run.timings)
        return outcome

    async def measure(
        self, request: StrategyRequest, services: Services, reference: Sequence[Candidate],
        utility: Callable[[Candidate], float | None], item: str,
    ) -> None:
        """Fused against selected gold utility on one probe item: the route's selection and
        fuser on a request's worth of its reference draws. Where serving would not fuse
        (agreement, tool calls), the two are the same answer."""
        fusion = self.settings
        group = adapt.groups(reference, self._variants, self._max_n)[:1]
        if not group:
            return
        plan = self._plan()
        run = Run(request.messages, services, self._clock, started=self._clock(), candidates=group[0])
        ctx = VerifyContext(request.messages, services, response_format=request.response_format)
        selection, choice = self._choose(run, select(run.candidates, await verify(run, plan, ctx)))
        selected = run.candidates[selection.index]
        shown = _fusion_inputs(choice, selection, run.candidates, fusion.top_k)
        fused = selected
        if not selected.tool_calls and len(shown) >= fusion.min_clusters:
            messages = fusion_messages(request.messages, [run.candidates[i].text for i in shown], fusion.template)
            try:
                batch = await services.generate(messages, 1, fusion.fuser)
            except BudgetExhausted:
                return
            text = Candidate(-1, "", batch.samples[0].message).text if batch.samples else ""
            if self._unusable(request.messages, selected, text) is None:  # else serving keeps the selected
                fused = fused_candidate(len(run.candidates), text, None, fusion.fuser)
        fused_utility, selected_utility = utility(fused), utility(selected)
        if fused_utility is not None and selected_utility is not None:
            self.gain.add(item, fused_utility, selected_utility)


def _fusion_inputs(choice: Choice, selection: Selection, candidates: Sequence[Candidate], top_k: int) -> list[int]:
    """The candidates the fuser reads: the strongest answered clusters' representatives, then
    (free text whose answers cannot be compared) unanswered candidates by ranking, shuffled."""
    clusters = choice.clusters
    ranked = [clusters[j].representative for j in ranked_clusters(choice, selection)]
    ranking = selection.ranking
    loose = [i for c in clusters if not c.answered for i in c.members]
    loose.sort(key=lambda i: -ranking[i] if not np.isnan(ranking[i]) else math.inf)
    return shown_answers(candidates, ranked + loose, top_k)


def _cause(error: BaseException | None) -> str:
    """Why a fuser call gave no answer, in words."""
    if isinstance(error, BudgetExhausted):  # never sent: the budget's words, not a class name
        return "the route's token budget cannot pay for its call"
    return failure_cause(error) if error is not None else "it returned no answer"


def _fusion_failed(outcome: Outcome, run: Run, cause: str) -> Outcome:
    """The selected answer, saying that the fuser failed and why."""
    assert outcome.fusion is not None
    outcome.fusion.update(fused=False, error=cause)
    if outcome.selection is not None:
        outcome.selection["fallback_reason"] = f"the fuser failed ({cause}); the selected candidate answered"
    outcome.usage = run.usage
    outcome.timings = dict(run.timings)
    return outcome
