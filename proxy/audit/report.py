"""A verifier audit written out: report.md for people, report.json for tools, PNG plots.

Plots need matplotlib (the `bench` extra); without it the report says so and the rest is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from strategies.risk.audit_stats import (
    PREFERS_UNDESIRABLE_BELOW,
    SWAP_AGREEMENT_MIN,
    TEMPLATE_DISAGREEMENT_MAX,
)

PLOTS = ("accuracy_by_domain.png", "position_bias.png")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _ci(row: dict[str, Any]) -> str:
    if row.get("accuracy") is None:
        return "n/a (nothing scored)"
    low, high = row["ci95"]
    return f"{_pct(row['accuracy'])} [{_pct(low)}, {_pct(high)}]"


def warnings_of(row: dict[str, Any]) -> list[str]:
    """What makes a row's accuracy say less than it seems to, beside its flags.

    Not flags: the serving policy (`fail_on`) never acts on them. Ties count half, so a verifier
    that ties on most pairs reads near 50% without having decided anything; replies that did not
    parse and calls that failed leave pairs unscored, or decided by fewer views than configured.
    """
    raised = []
    if row["scored"] and 2 * row["ties"] > row["scored"]:
        raised.append("mostly_ties")
    if row["parse_failures"]:
        raised.append("parse_failures")
    if row["call_failures"]:
        raised.append("call_failures")
    return raised


def raised(row: dict[str, Any]) -> list[str]:
    """The row's raised flags, then its warnings: what both the report and the terminal show."""
    return [name for name, on in row["flags"].items() if on] + warnings_of(row)


def _flags(row: dict[str, Any]) -> str:
    flagged = {name for name, on in row["flags"].items() if on}
    return ", ".join(f"**{name}**" if name in flagged else name for name in raised(row)) or "-"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Verifier audit",
        "",
        f"Config `{report['config']}`, {report['generated_at']}. Pairs: {report['data']['total_pairs']} "
        f"({report['data']['origin']}).",
        "",
        "Accuracy is the share of pairs on which the verifier preferred the socially desirable answer "
        "(ties count half), over the pairs it scored; pairs it could not score (a reply that did not "
        "parse, a failed call) are counted as unscored and left out, never scored 0. The interval is "
        "Wilson's 95% interval. Every pair is judged in both orders.",
        "",
        f"Flags: `prefers_undesirable` when the interval's upper bound is below {PREFERS_UNDESIRABLE_BELOW:.0%}; "
        f"`position_biased` when the verdicts of the two orders agree on fewer than {SWAP_AGREEMENT_MIN:.0%} "
        f"of pairs; `template_sensitive` when templates disagree on more than {TEMPLATE_DISAGREEMENT_MAX:.0%} "
        "of pairs. *A-picks* is the share of non-tie picks that went to the answer shown first (0.5 is "
        "order-blind). *Template α* is Krippendorff's alpha across templates (nominal).",
        "",
        "Warnings, shown in plain type beside the flags and never acted on by the serving policy: "
        "`mostly_ties` when more than half of the scored pairs are ties (each counts half, so accuracy "
        "reads near 50% without a decision); `parse_failures` and `call_failures` when any reply did not "
        "parse or any call failed.",
        "",
    ]
    for verifier in report["verifiers"]:
        lines += _verifier_section(verifier)
    lines += ["## Data sources and licences", "", "| domains | data | licence | conversion |", "|---|---|---|---|"]
    for family, source in report["data"]["sources"].items():
        lines.append(f"| `{family}` | {source['dataset']} | {source['licence']} | {source['conversion']} |")
    lines += ["", "| domain | pairs |", "|---|---:|"]
    lines += [f"| {domain} | {n} |" for domain, n in report["data"]["pairs_by_domain"].items()]
    if report.get("plots_skipped"):
        lines += ["", f"Plots: {report['plots_skipped']}"]
    return "\n".join(lines) + "\n"


def _verifier_section(verifier: dict[str, Any]) -> list[str]:
    overall = verifier["overall"]
    lines = [
        f"## `{verifier['name']}` ({verifier['kind']})",
        "",
        f"Routes: {', '.join(f'`{r}`' for r in verifier['routes'])}; configuration fingerprint "
        f"`{verifier['fingerprint'][:16]}`; orders run: {', '.join(overall['orders_run']) or 'none'}.",
        "",
        "| domain | pairs | accuracy [95% CI] | ties | unscored | parse failures | call failures "
        "| swap agreement | A-picks | template α | templates disagree | flags |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for domain, row in [*verifier["domains"].items(), ("**all**", overall)]:
        lines.append(
            f"| {domain} | {row['pairs']} | {_ci(row)} | {row['ties']} | {row['unscored']} | "
            f"{row['parse_failures']} | {row['call_failures']} | {_pct(row['swap_agreement'])} | "
            f"{_num(row['position_bias_rate'])} | {_num(row['template_alpha'])} | "
            f"{_pct(row['template_disagreement'])} | {_flags(row)} |"
        )
    templates = overall["templates"]
    if len(templates) > 1:
        lines += [
            "",
            "Templates (all domains):",
            "",
            "| template | accuracy [95% CI] | unscored | swap agreement | A-picks | agreement with the others |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name, row in templates.items():
            lines.append(
                f"| `{name}` | {_ci(row)} | {row['unscored']} | {_pct(row['swap_agreement'])} | "
                f"{_num(row['position_bias_rate'])} | {_pct(row['agreement_with_other_templates'])} |"
            )
        most, least = overall["most_consistent_template"], overall["least_consistent_template"]
        measured = [r["agreement_with_other_templates"] for r in templates.values()]
        if most:
            verdict = f"Most consistent template: `{most}`; least consistent: `{least}`."
        elif any(a is None for a in measured):
            verdict = "Template consistency not measured: some template decided no pair that another also decided."
        else:
            verdict = "Templates are equally consistent with one another (with two templates they always are)."
        lines += ["", verdict]
    lines.append("")
    return lines


def plot(report: dict[str, Any], out: Path) -> list[Path] | str:
    """The PNGs, or why there are none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("matplotlib is not installed, so no plots were drawn; install it with "
                "`pip install 'matplotlib>=3.8,<4'` "
                "(or the `bench` extra: `pip install -e '.[bench]'` in the checkout)")
    verifiers = report["verifiers"]
    domains = sorted({d for v in verifiers for d in v["domains"]})
    written = []
    height = max(3.0, 0.35 * len(domains) * max(1, len(verifiers)) + 1.5)
    fig, ax = plt.subplots(figsize=(9, height))
    bar = 0.8 / max(1, len(verifiers))
    for k, verifier in enumerate(verifiers):
        ys, xs, lows, highs = [], [], [], []
        for i, domain in enumerate(domains):
            row = verifier["domains"].get(domain)
            if row is None or row["accuracy"] is None:
                continue
            ys.append(i + k * bar)
            xs.append(row["accuracy"])
            lows.append(max(0.0, row["accuracy"] - row["ci95"][0]))
            highs.append(max(0.0, row["ci95"][1] - row["accuracy"]))
        ax.barh(ys, xs, height=bar, xerr=[lows, highs], capsize=2, label=verifier["name"])
    written.append(_save(plt, fig, ax, domains, bar, "accuracy: share preferring the desirable answer (Wilson 95% CI)",
                         out / PLOTS[0]))

    fig, ax = plt.subplots(figsize=(9, height))
    for k, verifier in enumerate(verifiers):
        ys, xs = [], []
        for i, domain in enumerate(domains):
            rate = verifier["domains"].get(domain, {}).get("position_bias_rate")
            if rate is not None:
                ys.append(i + k * bar)
                xs.append(rate)
        ax.barh(ys, xs, height=bar, label=verifier["name"])
    written.append(_save(plt, fig, ax, domains, bar, "share of picks for the answer shown first (0.5: order-blind)",
                         out / PLOTS[1]))
    return written


def _save(plt: Any, fig: Any, ax: Any, domains: list[str], bar: float, xlabel: str, path: Path) -> Path:
    """Both plots: a rate from 0 to 1 per domain, the 0.5 line marking chance or order-blindness."""
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(domains))], domains)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: dict[str, Any], out: Path, pair_rows: Sequence[dict[str, Any]]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(report, out)
    if isinstance(plots, str):
        report["plots_skipped"] = plots
        plots = []
    paths = [out / "report.json", out / "report.md", out / "pairs.jsonl", *plots]
    paths[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(report), encoding="utf-8")
    with paths[2].open("w", encoding="utf-8") as handle:
        for row in pair_rows:
            handle.write(json.dumps(row) + "\n")
    return paths
