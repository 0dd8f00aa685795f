"""`rvr-proxy probe --config F --route R [--items N] [--out FILE]`: one probe run, then the table.

The run goes through the same `ProbeRunner.run` as the background loop, with the same budget
(the hour's spend is shared with serving proxies and earlier runs through `server.state_dir`
and the state backend), and its gold records join the route's (in `server.state_dir` when that
is set, so a serving proxy picks them up).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from proxy.probes.runner import ProbeRunner, RunSummary
from proxy.probes.selection import RouteSelection
from proxy.telemetry.progress import Progress
from strategies.risk.calibration import COMPONENTS, surrogate
from strategies.selection.learned import LearnedSelector, SelectorState


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "-"


def table(summary: RunSummary, calibration: dict[str, Any]) -> str:
    """What one run measured, and the route's calibration with every gold item it has now."""
    errors = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.errors.items())) or "none"
    lines = [
        f"route {summary.route}: {summary.attempted} items probed, {summary.recorded} recorded, "
        f"errors: {errors}; {summary.tokens} upstream tokens",
    ]
    if summary.stopped:
        lines.append(f"stopped early: {summary.stopped}")
    lines += [
        "",
        f"{'component':<10} {'gold (this run)':>15} {'online (this run)':>17}   "
        f"calibrated, 90% interval ({calibration['n_items']} gold items, {calibration['n_records']} runs)",
    ]
    for component in COMPONENTS:
        gold = [r.truth(component) for r in summary.records]
        online = [surrogate(r.online, component) for r in summary.records]
        est = calibration.get(component)
        shown = f"{est['estimate']:.3f} [{est['ci90'][0]:.3f}, {est['ci90'][1]:.3f}] ({est['method']})" if est else "-"
        lines.append(f"{component:<10} {_mean(gold):>15} {_mean(online):>17}   {shown}")
    bias = calibration.get("verifier_bias")
    status = f"status: {calibration['status']} (tolerance ±{calibration['tolerance']:g})"
    if bias:
        low, high = bias["ci95"]
        status += f"; verifier bias (gold − online residual) {bias['estimate']:.3f} [{low:.3f}, {high:.3f}] (95%)"
    if calibration.get("rho") is not None:
        status += f"; rho {calibration['rho']:.2f}"
    lines += ["", status]
    return "\n".join(lines)


def selection_table(state: SelectorState, mode: str) -> str:
    """The learned-selection model the probe clusters give now: each signal's AUROC and weight."""
    lines = ["", f"selection (mode {mode}): learned model from the probe clusters"]
    model = state.model
    if model is None:
        return "\n".join([*lines, f"  none yet: {state.reason}"])
    lines.append(f"  {model.n_items} items, {model.n_clusters} clusters, L2 {model.l2:g}; "
                 f"held-out top-cluster accuracy {_fraction(model.cv_accuracy)} "
                 f"(largest cluster: {_fraction(model.cv_vote_accuracy)})")
    gate = state.safety
    if gate is not None:
        verdict = "open: the model serves" if gate.serves else "closed: weighted selection serves"
        measured = "" if gate.low is None else (
            f"; learned − weighted {gate.difference:+.3f} [{gate.low:+.3f}, {gate.high:+.3f}] (90%, "
            f"{gate.items} items: {_fraction(gate.learned)} vs {_fraction(gate.weighted)})")
        lines.append(f"  safety gate (margin {gate.margin:g}): {verdict}{measured}")
    lines.append(f"  {'signal':<24} {'AUROC':>6} {'weight':>8}")
    weights = dict(zip(model.signals, model.weights, strict=True))
    for signal, value in sorted(model.auroc.items()):
        weight = f"{weights[signal]:+.3f}" if signal in weights else "dropped"
        lines.append(f"  {signal:<24} {_fraction(value):>6} {weight:>8}")
    return "\n".join([*lines, *reliability_table(model)])


def reliability_table(model: LearnedSelector) -> list[str]:
    """`rvr.confidence` against what was right, on held-out probe items (method §10.7)."""
    measured = model.reliability
    if measured is None:
        return ["", "  confidence: the chosen cluster's own P(correct) (a model fitted before the recalibration)"]
    lines = ["", f"  confidence (held out, {measured.n} runs): expected calibration error {measured.ece:.3f}",
             f"  {'bin':<12} {'runs':>5} {'confidence':>10} {'accuracy':>9}"]
    for low, high, count, confidence, accuracy in measured.bins:
        if count:
            lines.append(f"  [{low:.1f}, {high:.1f}) {count:>5} {_fraction(confidence):>10} {_fraction(accuracy):>9}")
    return lines


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


async def _run(
    runner: ProbeRunner, selection: RouteSelection | None, items: int | None, out: Path | None
) -> int:
    # litellm's import is slow; only commands that call upstreams pay it
    from proxy.upstream.client import litellm_pool

    route = runner.route.name
    # Started as serving starts it: with Redis, the run's spend joins the budget every instance
    # reads (and it reads theirs); never fails, an unreachable Redis means this process's own.
    state = runner.pipeline.learning.state
    await state.start()
    try:
        async with litellm_pool() as http:  # the pool serving uses, so probes call upstreams alike
            runner.pipeline.http = http
            count = items if items is not None else len(runner.items)
            bar = Progress(count, f"probing {route}")
            summary = await runner.run(count, on_item=lambda s: bar.update(s.attempted, f"{s.tokens} tokens"))
    finally:
        await state.close()
    # computed here and now from every record, not the serving path's last background result
    print(table(summary, runner.calibration.snapshot(fresh=True)))
    if selection is not None:
        print(selection_table(selection.state(fresh=True), selection.settings.mode))
    if out is not None:
        with out.open("w", encoding="utf-8") as handle:
            for record in summary.records:
                handle.write(json.dumps(record.as_dict()) + "\n")
    return 0 if summary.recorded else 1


def probe_command(runner: ProbeRunner, selection: RouteSelection | None, items: int | None, out: str | None) -> int:
    """Run `runner` (the serving proxy's own, built from the same config) once, then print."""
    return asyncio.run(_run(runner, selection, items, Path(out) if out else None))
