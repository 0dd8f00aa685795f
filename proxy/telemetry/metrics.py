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

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RISK_BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
UNIT_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
CANDIDATE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512)

# The `component` label of `rvr_risk`: the fields of `RiskReport` that are risks, then the
# recovered share (baseline - residual). One constant, so a dashboard and the recorder agree.
RISK_TERMS = ("baseline", "residual", "candidate", "prompt", "verifier")
RISK_COMPONENTS = (*RISK_TERMS, "recovered")

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
RISK = Histogram(
    "rvr_risk",
    "Per-request online risk estimates, from the verifiers' own scores: uncalibrated unless "
    "rvr_calibration_status says the route's gold probes agree (else read rvr_calibrated_risk).",
    ["route", "component"],
    buckets=RISK_BUCKETS,
)
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

# Gold probes (method §9). Probe traffic is counted here and never as client requests.
PROBE_REQUESTS = Counter("rvr_probe_requests", "Probe items run through the route's pipeline.", ["route"])
PROBE_TOKENS = Counter("rvr_probe_tokens", "Upstream tokens spent on probe items, reference samples included.", ["route"])
PROBE_ERRORS = Counter(
    "rvr_probe_errors",
    "Probe items that produced no gold record: checker, upstream, rejected, or budget.",
    ["route", "reason"],
)
# Every worker computes the same numbers from the same gold records; the latest write wins.
CALIBRATED_RISK = Gauge(
    "rvr_calibrated_risk",
    "Gold-anchored (PPI++) risk estimate per component, with its 90% interval bounds.",
    ["route", "component", "bound"],
    multiprocess_mode="mostrecent",
)
CALIBRATION_STATUS = Gauge(
    "rvr_calibration_status",
    "1 for the route's current calibration status (calibrated, uncalibrated, inconclusive, no_gold), 0 for the others.",
    ["route", "status"],
    multiprocess_mode="mostrecent",
)
GOLD_ITEMS = Gauge(
    "rvr_gold_items", "Distinct gold probe items in the route's window (repeated runs of one item count once).",
    ["route"], multiprocess_mode="mostrecent",
)
# What best-of-N buys (method §4.8), from the route's gold probes, set as each request finishes.
ROUTE_GAIN = Gauge(
    "rvr_route_gain",
    "Gold accuracy of the route's served candidate cap minus one sample's, paired by probe item: "
    "bound estimate, lower and upper (90% interval).",
    ["route", "bound"],
    multiprocess_mode="mostrecent",
)
TOKENS_PER_POINT = Gauge(
    "rvr_tokens_per_point",
    "Upstream tokens a request spends beyond one plain call, per percentage point of gold accuracy that "
    "its candidate cap buys (recent requests); +Inf when the measured gain is not above 0.",
    ["route"],
    multiprocess_mode="mostrecent",
)

# --- scale out: shared state and per-key limits (proxy/state/, proxy/access/limits.py) ---------

# livemin: 0 as soon as any live worker cannot reach the state backend.
STATE_BACKEND_UP = Gauge(
    "rvr_state_backend_up",
    "1 while the shared state backend answers (always 1 for memory); 0: serving from local state.",
    multiprocess_mode="livemin",
)
# Key names come from server.keys (or `api_keys.<i>`), never the keys; status is the HTTP status.
KEY_REQUESTS = Counter("rvr_key_requests", "Requests by client key name and HTTP status.", ["key_name", "status"])
KEY_TOKENS = Counter("rvr_key_tokens", "Upstream tokens charged to a client key.", ["key_name"])

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

# --- learned selection (method §10: strategies/selection/learned.py, proxy/probes/selection.py) ---
# Signals are fixed feature names or `v:<verifier name>` from config. Every worker fits the same
# model from the same gold records; the latest write wins.
SELECTION_SIGNAL_AUROC = Gauge(
    "rvr_selection_signal_auroc",
    "Probe AUROC of each selection signal for P(cluster correct); 0.5 is chance, below 0.5 informs the other way.",
    ["route", "signal"],
    multiprocess_mode="mostrecent",
)
SELECTION_SIGNAL_WEIGHT = Gauge(
    "rvr_selection_signal_weight",
    "Fitted logistic weight of each selection signal (standardised units; 0 when dropped).",
    ["route", "signal"],
    multiprocess_mode="mostrecent",
)
SELECTION_GATE = Gauge(
    "rvr_selection_gate",
    "1 for the state of the route's learned-selection safety gate (open: the model serves; closed: its held-out "
    "accuracy may be worse than weighted selection's by more than gate_margin, so weighted serves; no_model), 0 for the others.",
    ["route", "state"],
    multiprocess_mode="mostrecent",
)
SELECTIONS = Counter(
    "rvr_selections", "Client requests by the selection that chose: weighted, learned, or fallback (learned configured, "
    "weighted chose: no model yet, or the safety gate closed).",
    ["route", "mode"],
)
# --- panels and fusion (strategies/best_of_n/panel.py, strategies/selection/fusion.py) ---------
PANEL_CANDIDATES = Counter("rvr_panel_candidates", "Candidates drawn from each panelist.", ["route", "upstream"])
PANEL_SELECTED = Counter(
    "rvr_panel_selected", "Requests whose selected candidate a panelist drew (before any fusion).", ["route", "upstream"]
)
PANEL_DROPPED = Counter(
    "rvr_panel_dropped", "Panelists dropped for a request: rate_limited, timeout, error or no_candidates.",
    ["route", "upstream", "reason"],
)
FUSIONS = Counter(
    "rvr_fusions", "Requests on fusion routes by result: fused, skipped (agreement, n > 1, tool calls, the gold "
    "gate) or failed (the selected candidate answered).", ["route", "result"],
)
FUSION_GAIN = Gauge(
    "rvr_fusion_gain",
    "Gold utility of fused minus selected answers, paired by probe item: bound estimate, lower and upper "
    "(90% interval).",
    ["route", "bound"],
    multiprocess_mode="mostrecent",
)
LOW_CONFIDENCE = Counter(
    "rvr_low_confidence",
    "Client requests answered by the route's low-confidence fallback (another route, or abstention).",
    ["route", "action"],
)


def render() -> tuple[bytes, str]:
    """The exposition text, summed over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
