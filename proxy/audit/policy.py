"""The serving side of verifier audits: refuse to start on a missing or failed required audit,
and export every stored audit as gauges.

A verifier with `audit: {require: true, min_accuracy, domains, min_pairs, fail_on}` may serve
only when `server.state_dir` holds an audit of this very configuration (see
proxy/audit/store.py) in which every listed domain (or every audited domain, when none
are listed) has at least `min_pairs` scored pairs, an accuracy of at least `min_accuracy` and
none of the `fail_on` flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.audit.data import matches
from proxy.audit.store import fingerprint, load
from proxy.config.settings import Config, ConfigError
from strategies.risk.audit_stats import FLAGS
from strategies.verifiers.base import VerifierSpec


def _verifiers(config: Config) -> list[tuple[int, str, VerifierSpec]]:
    return [
        (i, route.model, spec)
        for i, route in enumerate(config.routes)
        for spec in route.strategy.audited_specs()
    ]


def audit_problems(config: Config) -> list[str]:
    """Why routes may not serve, one line per verifier and domain; empty when all may."""
    problems = []
    state_dir = config.server.state_dir
    for i, route, spec in _verifiers(config):
        policy = spec.audit
        if not policy.require:
            continue
        where = f"routes.{i} ({route}): verifier {spec.name!r}"
        command = f"run `rvr-proxy audit --config FILE --route {route} --verifier {spec.name} --out DIR`"
        if state_dir is None:
            problems.append(f"{where} requires an audit (audit.require), but server.state_dir is not set, "
                            f"so no audit result can be read; set server.state_dir and {command}")
            continue
        result = load(Path(state_dir), spec.name, fingerprint(config, spec))
        if result is None:
            problems.append(f"{where}: the required audit is missing for this configuration "
                            f"(none stored in {Path(state_dir) / 'verifier_audit'}); {command}")
            continue
        problems += [f"{where}: {p}" for p in _domain_problems(result, spec, command)]
    return problems


def _domain_problems(result: dict[str, Any], spec: VerifierSpec, command: str) -> list[str]:
    policy = spec.audit
    domains: dict[str, Any] = result.get("domains") or {}
    selectors = policy.domains or sorted(domains)
    if not selectors:
        return [f"the stored audit has no domains; {command}"]
    problems = []
    for selector in selectors:
        matched = [d for d in sorted(domains) if matches(d, [selector])]
        if not matched:
            problems.append(f"domain {selector!r} was not audited (audited: {', '.join(sorted(domains))}); {command}")
        for domain in matched:
            row = domains[domain]
            accuracy, scored = row.get("accuracy"), int(row.get("scored") or 0)
            if scored < policy.min_pairs or accuracy is None:
                problems.append(f"domain {domain!r}: the audit scored {scored} pairs, audit.min_pairs is "
                                f"{policy.min_pairs}; {command} with more pairs")
                continue
            low, high = row["ci95"]
            if accuracy < policy.min_accuracy:
                problems.append(f"domain {domain!r}: audit failed, accuracy {accuracy:.3f} "
                                f"(95% CI {low:.3f}-{high:.3f}) is below audit.min_accuracy {policy.min_accuracy}")
            raised = [flag for flag in policy.fail_on if row.get("flags", {}).get(flag)]
            if raised:
                problems.append(f"domain {domain!r}: audit failed, flagged {', '.join(raised)}")
    return problems


def check_required_audits(config: Config) -> None:
    """Raise a ConfigError naming every verifier and domain whose required audit is missing or
    failed; called before serving starts."""
    problems = audit_problems(config)
    if problems:
        raise ConfigError("required verifier audits are missing or failed:\n  " + "\n  ".join(problems))


def export_metrics(config: Config) -> None:
    """Set the audit gauges from every stored audit of a configured verifier."""
    from proxy.telemetry import metrics

    state_dir = config.server.state_dir
    if state_dir is None:
        return
    seen: set[str] = set()
    for _, _, spec in _verifiers(config):
        if spec.name in seen:
            continue
        result = load(Path(state_dir), spec.name, fingerprint(config, spec))
        if result is None:
            continue
        seen.add(spec.name)
        for domain, row in (result.get("domains") or {}).items():
            if row.get("accuracy") is not None:
                metrics.VERIFIER_AUDIT_ACCURACY.labels(spec.name, domain).set(row["accuracy"])
            for flag, on in (row.get("flags") or {}).items():
                if flag in FLAGS:  # a label only from the fixed set, whatever the stored file says
                    metrics.VERIFIER_AUDIT_FLAG.labels(spec.name, domain, flag).set(1.0 if on else 0.0)


def enforce(config: Config) -> None:
    """At start-up: refuse a missing or failed required audit, then export what is stored."""
    check_required_audits(config)
    export_metrics(config)
