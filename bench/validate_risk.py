"""Validate the proxy's per-request risk estimates (`rvr.risk`, method §3) against exact truth (§5).

Starts the simulated upstream (bench/sim_upstream.py) and the REAL proxy (`python -m proxy.cli
serve`, generated config) as child processes, sends a few hundred requests per scenario through
the proxy, and compares every estimate with the truth of the simulated world.

Truths (per request x, with the n candidates it actually sampled; U = true utility, never a score)
-------------------------------------------------------------------------------------------------
Family V = the route's variants; REU_K(x) = exact E[max U] of K draws spread round-robin over V
(Beta CDFs integrated numerically; 1 − Π(1−p_v)^k_v for 0/1). n_v = the request's variant counts.

* ``aeu``       AEU(x) = E[U] of one original-prompt sample (Beta mean or p_x).
* ``baseline``  RVR(x) = REU_Kref(x) − AEU(x).
* ``candidate`` C(x) = REU_Kref(x) − REU_n(x): what more samples (same variant mix) would still add.
* ``prompt``    P(x) = E[max of m drawn without replacement from a pool with counts n_v]
                − REU_m(original), m = number of original candidates: exactly what P̂ = Ê_m(pooled)
                − Ê_m(original) estimates (a multivariate-hypergeometric mix of exact REUs).
* ``verifier``  V(x) = E_ε[max_i U_i − U(ŷ)]: the expected utility lost by *picking* among these
                candidates, over fresh verifier noise ε (2000 Monte Carlo redraws of every view's
                noise, z and the candidates held fixed, the proxy's selection rule replayed: per-view
                min-max, mean, argmax). ``V_real`` = max_i U_i − U(ŷ) is this request's realized loss.
* ``residual``  Residual(x) = REU_Kref(x) − U(ŷ) = C(x) + ξ + V_real with the luck term
                ξ = REU_n(x) − max_i U_i (zero mean). The script checks this identity and E[ξ] ≈ 0.

Score-scale truths (``*_s`` columns): the same REU-based quantities for the distribution of the
ensemble score s̄ = mean_v clip(U + β z + σ ε_v) (20000 draws per variant). The estimators only ever
see s̄, so on the s̄ scale they estimate these; the gap between the U-scale and s̄-scale truth is
the bias that verifier noise and shared bias cause, which no per-request estimator can remove.

Metrics: bias = mean(estimate − truth) (± its standard error), RMSE, Spearman ρ over requests,
and coverage = share of requests whose truth lies inside the proxy's 90% interval.

Scenarios (scored = U ~ Beta; discrete = 0/1 utilities, p_x ~ Beta(0.5, 2)):
  noise       scored, 4 reward views, σ=0.1, β=0, fixed n=16, no variants, K_ref=64
  variants    as noise, variants original/step_by_step/reread/expert (4 of each)
  shared-β    as noise with a shared bias β·z (β = 0.1, 0.25) on the SAME candidates (common random
              numbers), to show that V̂r cannot see it while the true residual grows
  oracle-kK   discrete, one oracle view (s = U), n=16, K_ref = 8, 16, 64: reproduces the study's
              R̂_K = U°_K − Ū (U°_K = unbiased reachable utility, pass@K-style; Ū = A_K, the mean
              utility of plain samples) computed directly from the candidates
  binary      (not in the default set) more 0/1 worlds with one oracle view, all extrapolating
              past n: oracle-k256 (K_ref = 256), oracle-easy-k64 (p_x ~ Beta(2, 0.5), many all-right
              requests), oracle-n8-k64 (n = 8), oracle-variants-k64 (4 variants, 4 candidates each)

    python bench/validate_risk.py                    # ~4–6 min on 2 cores
    python bench/validate_risk.py --items 100        # quicker
    python bench/validate_risk.py --scenarios noise,oracle
    python bench/validate_risk.py --smoke            # every scenario, 16 requests each: a check of the path
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: bench.*, proxy, strategies

from bench.common import HelpFormatter, add_smoke, apply_smoke
from bench.sim_upstream import (
    DISCRETE,
    VARIANT_CODE,
    World,
    parse_marker,
    prompt,
    reward_views,
    round_robin,
    sim_and_proxy,
    upstream,
)

ALL_VARIANTS = ["original", "step_by_step", "reread", "expert"]
SMOKE = {"items": 16, "scenarios": "noise,variants,shared,oracle,binary", "latency": 0.01}


@dataclass
class Scenario:
    name: str
    task: str
    views: int
    sigma: float
    beta: float = 0.0
    variants: list[str] = field(default_factory=lambda: ["original"])
    k_ref: int = 64
    n: int = 16
    trial: int = 1  # scenarios with the same trial see the same candidates


def scenarios(selected: set[str]) -> list[Scenario]:
    out = []
    if "noise" in selected:
        out.append(Scenario("noise", "scored", 4, 0.1))
    if "variants" in selected:
        out.append(Scenario("variants", "scored", 4, 0.1, variants=ALL_VARIANTS, trial=2))
    if "shared" in selected:
        out += [Scenario(f"shared-{b}", "scored", 4, 0.1, beta=b) for b in (0.1, 0.25)]
    if "oracle" in selected:
        out += [Scenario(f"oracle-k{k}", "discrete", 1, 0.0, k_ref=k, trial=3) for k in (8, 16, 64)]
    if "binary" in selected:  # more 0/1 worlds for the extrapolated (K_ref > n) candidate term
        out += [Scenario("oracle-k256", "discrete", 1, 0.0, k_ref=256, trial=3),
                Scenario("oracle-easy-k64", "easy", 1, 0.0, k_ref=64, trial=3),
                Scenario("oracle-n8-k64", "discrete", 1, 0.0, n=8, trial=3),
                Scenario("oracle-variants-k64", "discrete", 1, 0.0, variants=ALL_VARIANTS, trial=4)]
    return out


def proxy_config(base: str, scens: list[Scenario]) -> dict[str, Any]:
    routes = []
    for s in scens:
        routes.append({"model": s.name, "upstream": "sim", "strategy": {
            "name": "best_of_n", "max_n": s.n, "adaptive": False, "variants": s.variants, "k_ref": s.k_ref,
            "verifiers": reward_views(base, s.views, s.sigma, s.beta)}})
    return {"server": {"request_timeout_s": 120}, "upstreams": [upstream("sim", base)], "routes": routes}


# --- driving the proxy ------------------------------------------------------------------------


async def drive(base: str, scen: Scenario, items: int, concurrency: int) -> list[tuple[int, dict[str, Any]]]:
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(item: int) -> tuple[int, dict[str, Any]]:
            body = {"model": scen.name, "messages": [{"role": "user", "content": prompt(item, scen.task, scen.trial, scen.name)}],
                    "rvr": {"details": True}}
            async with limit:
                response = await client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                print(f"[{scen.name}] item {item}: HTTP {response.status_code} {response.text[:300]}", file=sys.stderr)
                return item, None
            return item, response.json()

        done = await asyncio.gather(*(one(i) for i in range(items)))
        return [(item, body) for item, body in done if body is not None]


# --- truth ------------------------------------------------------------------------------------


class ScoreScale:
    """The distribution of s̄ = mean_v clip(U + β z + σ ε_v) per (item, variant), by Monte Carlo."""

    GRID = np.linspace(0.0, 1.0, 2001)

    def __init__(self, world: World, scen: Scenario, draws: int = 20000) -> None:
        self.world, self.scen, self.draws = world, scen, draws
        self._cdfs: dict[tuple[int, str], np.ndarray] = {}

    def cdf(self, item: int, variant: str) -> np.ndarray:
        key = (item, variant)
        if key not in self._cdfs:
            it = self.world.item(item, self.scen.task)
            rng = np.random.default_rng([item, VARIANT_CODE[variant], 99])
            if self.scen.task in DISCRETE:
                u = (rng.random(self.draws) < it.p[variant]).astype(float)
            else:
                u = rng.beta(it.a[variant], it.b, self.draws)
            z = rng.normal(size=self.draws)
            eps = rng.normal(size=(self.draws, self.scen.views))
            s = np.clip(u[:, None] + self.scen.beta * z[:, None] + self.scen.sigma * eps, 0, 1).mean(axis=1)
            self._cdfs[key] = np.searchsorted(np.sort(s), self.GRID, side="right") / self.draws
        return self._cdfs[key]

    def reu(self, item: int, counts: dict[str, int]) -> float:
        below = np.ones_like(self.GRID)
        for v, k in counts.items():
            if k:
                below = below * self.cdf(item, v) ** k
        return float(np.trapezoid(1.0 - below, self.GRID))

    def mean(self, item: int, variant: str) -> float:
        return float(np.trapezoid(1.0 - self.cdf(item, variant), self.GRID))


def replay_selection_loss(u: np.ndarray, z: np.ndarray, scen: Scenario, rng: np.random.Generator, redraws: int = 2000) -> float:
    """E over fresh view noise of max U − U(ŷ), ŷ picked as the proxy does (per-view min-max, mean)."""
    if scen.sigma == 0 and scen.beta == 0:
        return 0.0
    eps = rng.normal(size=(redraws, len(u), scen.views))
    s = np.clip(u[None, :, None] + scen.beta * z[None, :, None] + scen.sigma * eps, 0, 1)
    low, high = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    span = high - low
    norm = np.where(span > 1e-9, (s - low) / np.where(span > 1e-9, span, 1.0), np.nan)
    key = np.nanmean(norm, axis=2)
    key = np.where(np.isnan(key), -1.0, key)
    picked = u[np.argmax(key, axis=1)]
    return float(u.max() - picked.mean())


def unbiased_reachable(correct: int, n: int, k: int) -> float:
    """U°_K for 0/1 utilities from n samples with `correct` right (the Codex pass@k formula)."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def truths(world: World, scen: Scenario, item: int, body: dict[str, Any], scale: ScoreScale,
           rng: np.random.Generator) -> dict[str, Any]:
    rvr = body["rvr"]
    marks = [parse_marker(t) for t in rvr["candidate_texts"]]
    u = np.array([m[0] for m in marks])
    z = np.array([m[1] for m in marks])
    variants = rvr["candidate_variants"]
    n = len(u)
    counts = {v: variants.count(v) for v in scen.variants}
    family_k = round_robin(scen.variants, scen.k_ref)
    reu_k = world.reu(item, scen.task, family_k)
    reu_n = world.reu(item, scen.task, counts)
    aeu = world.aeu(item, scen.task)
    sel = rvr["selected"]
    t: dict[str, Any] = {
        "aeu": aeu, "baseline": reu_k - aeu, "candidate": reu_k - reu_n,
        "residual": reu_k - u[sel], "xi": reu_n - u.max(), "v_real": u.max() - u[sel],
        "verifier": replay_selection_loss(u, z, scen, rng), "u_sel": u[sel], "u_max": u.max(), "n": n,
        "aeu_s": scale.mean(item, "original"),
    }
    reu_k_s = scale.reu(item, family_k)
    t["baseline_s"] = reu_k_s - t["aeu_s"]
    t["candidate_s"] = reu_k_s - scale.reu(item, counts)
    m = counts.get("original", 0)
    if 0 < m < n:
        t["prompt"] = world.reu_subset(item, scen.task, counts, m) - world.reu(item, scen.task, {"original": m})
    if scen.task in DISCRETE:
        correct = int(u.sum())
        k = min(scen.k_ref, n)
        t["study_reachable"] = unbiased_reachable(correct, n, k)
        t["study_mean"] = correct / n
        t["study_rhat"] = t["study_reachable"] - t["study_mean"]
        t["true_reachable_kref"] = reu_k
        t["correct"] = correct
    return t


# --- statistics -------------------------------------------------------------------------------


def compare(rows: list[tuple[dict[str, Any], dict[str, Any]]], component: str, truth_key: str) -> dict[str, Any] | None:
    est, tru, covered = [], [], []
    for risk, t in rows:
        value = risk.get(component)
        if value is None or t.get(truth_key) is None:
            continue
        est.append(value)
        tru.append(t[truth_key])
        interval = (risk.get("intervals") or {}).get(component)
        if interval is not None:
            covered.append(interval[0] - 1e-12 <= t[truth_key] <= interval[1] + 1e-12)
    if not est:
        return None
    e, g = np.array(est), np.array(tru)
    d = e - g
    rho = spearmanr(e, g).statistic if len(e) > 2 and np.ptp(e) > 0 and np.ptp(g) > 0 else float("nan")
    return {"n": len(e), "est": e.mean(), "truth": g.mean(), "bias": d.mean(), "se": d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0,
            "rmse": math.sqrt((d**2).mean()), "rho": rho,
            "coverage": (100.0 * np.mean(covered)) if covered else None, "n_int": len(covered)}


def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return str(x)
    return f"{x:+.{digits}f}" if digits == 4 and x < 0 else f"{x:.{digits}f}"


COMPONENTS = [("baseline", "baseline"), ("baseline", "baseline_s"), ("candidate", "candidate"), ("candidate", "candidate_s"),
              ("prompt", "prompt"), ("verifier", "verifier"), ("verifier", "v_real"), ("aeu", "aeu"), ("aeu", "aeu_s"),
              ("residual", "residual")]


def component_table(name: str, rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    out = [f"#### {name}", "", "| estimate | truth | n | mean est | mean truth | bias ± se | RMSE | Spearman ρ | 90% coverage |",
           "|---|---|---|---|---|---|---|---|---|"]
    for component, truth_key in COMPONENTS:
        r = compare(rows, component, truth_key)
        if r is None:
            continue
        cov = "no interval" if r["coverage"] is None else f"{r['coverage']:.1f}% (n={r['n_int']})"
        out.append(f"| {component} | {truth_key} | {r['n']} | {r['est']:.4f} | {r['truth']:.4f} | "
                   f"{r['bias']:+.4f} ± {r['se']:.4f} | {r['rmse']:.4f} | {fmt(r['rho'], 2)} | {cov} |")
    return out


def sum_check(name: str, rows: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    res = np.array([t["residual"] for _, t in rows])
    c = np.array([t["candidate"] for _, t in rows])
    xi = np.array([t["xi"] for _, t in rows])
    v = np.array([t["v_real"] for _, t in rows])
    identity = np.abs(res - (c + xi + v)).max()
    est_sum = []
    for risk, _ in rows:
        parts = [risk.get("candidate"), None if risk.get("prompt") is None else max(risk["prompt"], 0.0), risk.get("verifier")]
        if risk.get("residual") is not None:
            est_sum.append(abs(risk["residual"] - sum(p for p in parts if p is not None)))
    est_res = np.array([r["residual"] for r, _ in rows if r.get("residual") is not None])
    se = xi.std(ddof=1) / math.sqrt(len(xi))
    return (f"| {name} | {res.mean():.4f} | {c.mean():.4f} | {v.mean():.4f} | {xi.mean():+.4f} ± {se:.4f} | {xi.std(ddof=1):.4f} | "
            f"{identity:.1e} | {est_res.mean():.4f} | {max(est_sum) if est_sum else float('nan'):.1e} |")


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--items", type=int, default=300, help="requests (distinct items) per scenario")
    parser.add_argument("--scenarios", default="noise,variants,shared,oracle")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05, help="sim seconds per generation call")
    parser.add_argument("--concurrency", type=int, default=16)
    add_smoke(parser, "16 requests in every scenario, binary included")
    args = apply_smoke(parser.parse_args(argv), SMOKE)
    scens = scenarios(set(args.scenarios.split(",")))
    world = World(args.seed)
    started = time.monotonic()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rvr-validate-") as tmp:
        workdir = Path(tmp)
        results: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        with sim_and_proxy(workdir, args.seed, args.latency, lambda base: proxy_config(base, scens)) as (_, proxy_base):
            rng = np.random.default_rng(args.seed + 1)
            for scen in scens:
                t0 = time.monotonic()
                bodies = asyncio.run(drive(proxy_base, scen, args.items, args.concurrency))
                failed += args.items - len(bodies)
                scale = ScoreScale(world, scen)
                results[scen.name] = [(b["rvr"]["risk"], truths(world, scen, item, b, scale, rng)) for item, b in bodies]
                print(f"[{scen.name}] {len(bodies)} requests in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    report(args, scens, results, time.monotonic() - started)
    if failed:
        print(f"{failed} request(s) failed (see above)", file=sys.stderr)
    return 1 if failed else 0


def report(args: argparse.Namespace, scens: list[Scenario], results: dict[str, Any], elapsed: float) -> None:
    print("## Risk-estimate validation (bench/validate_risk.py)\n")
    print(f"`python bench/validate_risk.py --items {args.items} --scenarios {args.scenarios} --seed {args.seed}` — "
          f"{elapsed:.0f} s. Fixed n=16 per request, bootstrap 200, truth per request as in the script docstring "
          f"(`X_s` = the same truth on the ensemble-score scale).\n")
    for scen in scens:
        desc = (f"{scen.task}, {scen.views} view(s) σ={scen.sigma} β={scen.beta}, variants={scen.variants}, "
                f"K_ref={scen.k_ref}")
        print("\n".join(component_table(f"{scen.name}: {desc}", results[scen.name])) + "\n")
    print("#### Components vs residual (truth): Residual = C + V_real + ξ, ξ = REU_n − max U\n")
    print("| scenario | mean Residual | mean C | mean V_real | mean ξ ± se | sd ξ | max identity error | mean est. residual | max |res − Σ terms| (estimates) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scen in scens:
        print(sum_check(scen.name, results[scen.name]))
    shared = [s for s in scens if s.name in ("noise",) or s.name.startswith("shared-")]
    if len(shared) > 1:
        print("\n#### Shared bias is invisible online (same items, same candidates)\n")
        print("| β (shared) | mean V̂r (proxy) | mean true V = E[max U − U(ŷ)] | mean true residual | mean est. residual | mean selected U |")
        print("|---|---|---|---|---|---|")
        for s in shared:
            rows = results[s.name]
            vr = [r["verifier"] for r, _ in rows if r.get("verifier") is not None]
            print(f"| {s.beta} | {np.mean(vr):.4f} | {np.mean([t['verifier'] for _, t in rows]):.4f} | "
                  f"{np.mean([t['residual'] for _, t in rows]):.4f} | {np.mean([r['residual'] for r, _ in rows]):.4f} | "
                  f"{np.mean([t['u_sel'] for _, t in rows]):.4f} |")
    oracle = [s for s in scens if s.name.startswith("oracle")]
    if oracle:
        print("\n#### 0/1 utilities, oracle verifier: the study's R̂_K = U°_K − Ū (Ū = A_K) from the same candidates\n")
        print("| K_ref | n | mean proxy `baseline` | mean study R̂_K (K=min(K_ref,n)) | max |baseline − R̂_K| | mean proxy `aeu` | "
              "mean Ū (A_K) | max |aeu − Ū| | mean true RVR_Kref | bias vs truth |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s in oracle:
            rows = results[s.name]
            base = np.array([r["baseline"] for r, _ in rows])
            rhat = np.array([t["study_rhat"] for _, t in rows])
            aeu = np.array([r["aeu"] for r, _ in rows])
            mean_u = np.array([t["study_mean"] for _, t in rows])
            truth = np.array([t["baseline"] for _, t in rows])
            diff = f"{np.abs(base - rhat).max():.4f}" if s.k_ref <= s.n else "n/a (K_ref > n: extrapolated)"
            print(f"| {s.k_ref} | {s.n} | {base.mean():.4f} | {rhat.mean():.4f} | {diff} | "
                  f"{aeu.mean():.4f} | {mean_u.mean():.4f} | {np.abs(aeu - mean_u).max():.1e} | {truth.mean():.4f} | "
                  f"{(base - truth).mean():+.4f} |")
        print("\nCandidate term by what the request saw (0/1 utilities, oracle; §3's Ĉ is 0 whenever all n candidates "
              "are equal, which for 0/1 means all wrong or all right)\n")
        print("| scenario | K_ref | requests seen | share | mean Ĉ | mean true C | mean Ĉ − C | RMSE Ĉ | "
              "mean baseline − truth | RMSE baseline |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s in oracle:
            rows = results[s.name]
            for label, keep in ((f"all {s.n} wrong (c = 0)", lambda t: t["correct"] == 0),
                                ("some right, some wrong", lambda t: 0 < t["correct"] < t["n"]),
                                (f"all {s.n} right", lambda t: t["correct"] == t["n"])):
                sel = [(r, t) for r, t in rows if keep(t) and r.get("candidate") is not None]
                if not sel:
                    continue
                c_hat = np.array([r["candidate"] for r, _ in sel])
                c_true = np.array([t["candidate"] for _, t in sel])
                b_err = np.array([r["baseline"] - t["baseline"] for r, t in sel])
                print(f"| {s.name} | {s.k_ref} | {label} | {len(sel) / len(rows):.2f} | {c_hat.mean():.4f} | "
                      f"{c_true.mean():.4f} | {(c_hat - c_true).mean():+.4f} | {np.sqrt(((c_hat - c_true) ** 2).mean()):.4f} | "
                      f"{b_err.mean():+.4f} | {np.sqrt((b_err ** 2).mean()):.4f} |")


if __name__ == "__main__":
    sys.exit(main())
