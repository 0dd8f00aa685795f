"""Prometheus metrics. Every label value comes from config names or fixed enums.

With several workers, prometheus-client's multiprocess mode is used: `PROMETHEUS_MULTIPROC_DIR`
is set by the CLI to a directory private to this instance and cleaned at start.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from strategies.verifier_audit_stats import FLAGS as VERIFIER_AUDIT_FLAGS

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RISK_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
CANDIDATE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512)

RISK_COMPONENTS = ("baseline", "residual", "candidate", "prompt", "verifier", "recovered")

REQUESTS = Counter("rvr_requests", "Requests handled.", ["route", "strategy", "status"])
REQUEST_DURATION = Histogram(
    "rvr_request_duration_seconds",
    "Wall time of a request.",
    ["route", "strategy"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_REQUESTS = Counter("rvr_upstream_requests", "Upstream calls by outcome.", ["upstream", "outcome"])
UPSTREAM_LATENCY = Histogram(
    "rvr_upstream_latency_seconds",
    "Latency of one upstream call.",
    ["upstream"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter("rvr_tokens", "Upstream tokens spent, every candidate and judge call included.", ["route", "kind"])
PASSTHROUGH_TOKENS = Counter(
    "rvr_passthrough_equivalent_tokens",
    "Tokens one plain call would have spent (the first candidate's), for the cost multiplier.",
    ["route", "kind"],
)
CANDIDATES = Histogram("rvr_candidates", "Candidates per request.", ["route"], buckets=CANDIDATE_BUCKETS)
STOPS = Counter("rvr_stop", "Why adaptive sampling stopped.", ["route", "reason"])
RISK = Histogram("rvr_risk", "Per-request rational value risk estimates.", ["route", "component"], buckets=RISK_BUCKETS)
SELECTED_SCORE = Histogram(
    "rvr_selected_score", "Ensemble score of the returned candidate.", ["route"], buckets=UNIT_BUCKETS
)
VERIFIER_DISAGREEMENT = Histogram(
    "rvr_verifier_disagreement",
    "Verifier term: loss from disagreeing views.",
    ["route"],
    buckets=RISK_BUCKETS,
)
VERIFIER_RUNS = Counter(
    "rvr_verifier_runs",
    "Verifier runs: ok, failed (raised), missing (judge/reward calls inside that failed or did not parse).",
    ["route", "verifier", "outcome"],
)
AUDITS = Counter("rvr_audit_requests", "Requests sampled as audit traffic.", ["route"])
AUDIT_TOKENS = Counter("rvr_audit_tokens", "Tokens spent on audit requests.", ["route"])


def render() -> tuple[bytes, str]:
    """The exposition text, summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

# Verifier audits (`rvr-proxy audit`), read from server.state_dir at start-up. Not the sampled
# audit traffic above. Every worker sets the same values, so the most recent one is the value.
VERIFIER_AUDIT_ACCURACY = Gauge(
    "rvr_verifier_audit_accuracy",
    "Share of gold pairs on which the verifier preferred the socially desirable answer, per domain.",
    ["verifier", "domain"],
    multiprocess_mode="mostrecent",
)
VERIFIER_AUDIT_FLAG = Gauge(
    "rvr_verifier_audit_flag",
    "1 when the verifier's audit raised the flag in the domain, else 0.",
    ["verifier", "domain", "flag"],
    multiprocess_mode="mostrecent",
)
