"""The deployment files (deploy/) are correct against the real tools and the proxy's real metrics.

- Prometheus config and rules pass `promtool`; the alert rules' unit tests pass (`promtool test rules`).
- Every PromQL expression in the Grafana dashboard parses (promtool has no PromQL-only check, so each
  expression is wrapped in a recording rule) and every metric name the dashboard and the rules use is
  one the proxy exports, derived from `proxy.telemetry.metrics` itself, never from a list kept here.
- The dashboard parses with grafana-foundation-sdk, has a query in every panel and a `route` variable.
- deploy/docker-compose.yml is valid against the official Compose Specification JSON schema,
  vendored in tests/fixtures/compose-spec.json (offline; its source is `COMPOSE_SCHEMA_SOURCE`).
- tests/prometheus_server.py runs a real Prometheus that scrapes a prometheus-client endpoint.

promtool and prometheus come from the Debian `prometheus` package, which CI installs: a missing
binary is a failure, not a skip, so these checks cannot silently stop running.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import proxy.telemetry.metrics
from proxy.config.settings import parse_config
from tests.prometheus_server import running_prometheus

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rvr-proxy.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "rvr.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
COMPOSE_SCHEMA = Path(__file__).parents[1] / "fixtures" / "compose-spec.json"
# Where tests/fixtures/compose-spec.json comes from, byte for byte (the test checks the blob hash).
# compose-spec/compose-spec keeps this draft-07 copy for tools that read it there; the schema
# docker compose itself loads is compose-go's (same rules, rewritten to draft 2020-12).
COMPOSE_SCHEMA_SOURCE = {
    "repository": "https://github.com/compose-spec/compose-spec",
    "path": "schema/compose-spec.json",
    "commit": "a08f8d51631b7127ddac3d2c65537db429d0f1d0",  # its last change; unchanged at 170098ba (2026-06-23)
    "date": "2025-10-21",
    "git_blob": "5db97d0fbbb8e7fbedea0bb5fdb3fe0e93b0e4b1",
    "draft": "draft-07",
}

# Concrete stand-ins for Grafana's variables, only so that promtool can parse the expressions.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "route": "chat|default",
    "upstream": "local",
}
# Series Prometheus itself writes for every scrape target, so not exported by the proxy.
PROMETHEUS_SYNTHETIC = {"up"}

# Suffixes prometheus-client adds to a metric family's name in the exposition format.
EXPOSED_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
}


# --- helpers ---------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH. Install the Debian package: "
            "`apt-get install -y --no-install-recommends prometheus` (gives prometheus and promtool 2.42)."
        )
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def assert_promtool_ok(*args: str | Path) -> None:
    result = run_promtool(*args)
    assert result.returncode == 0, (
        f"promtool {' '.join(map(str, args))} failed ({result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )


def exported_metric_names() -> set[str]:
    """Every series name the proxy's /metrics can expose, from the metric objects in proxy.telemetry.metrics.

    The names come from the objects, so a rename in proxy/telemetry/metrics.py breaks the dashboard check
    here rather than silently blanking a Grafana panel.
    """
    registered = {family.name for family in REGISTRY.collect()}
    names: set[str] = set()
    for attribute in vars(proxy.telemetry.metrics).values():
        if not isinstance(attribute, MetricWrapperBase):
            continue
        for family in attribute.describe():
            # In single-process mode render() serves the default REGISTRY: a metric built with
            # registry=None or a private registry would never reach /metrics.
            assert family.name in registered, f"{family.name} is not in prometheus_client.REGISTRY"
            names.update(family.name + suffix for suffix in EXPOSED_SUFFIXES[family.type])
    assert names, "found no metric objects in proxy.telemetry.metrics"
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords or labels.

    A tokenizer, not a parser, which is enough because promtool has already checked the syntax:
    strings, label matchers, ranges and grouping label lists are dropped first, then any remaining
    identifier not followed by "(" is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if re.match(r"\s*\(", text[match.end():]) or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def substitute_grafana_variables(expr: str) -> str:
    """Replace $var, ${var}, ${var:format} and [[var]] with concrete values from GRAFANA_VARIABLES."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"no test value for Grafana variable {name!r} in {expr!r}")
        return GRAFANA_VARIABLES[name]

    # Longest names first in the alternation is not needed: \w+ is greedy, so $__rate_interval
    # is never read as $__rate.
    result = re.sub(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)
    assert "$" not in result, f"unsubstituted variable left in {result!r}"
    return result


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in walk_panels(dashboard["panels"]) if p.get("type") != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(id, expr) for every target of every panel, ids like "Request latency/B"."""
    return [
        (f"{panel['title']}/{target.get('refId', '?')}", target["expr"])
        for panel in query_panels(load_dashboard())
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[str]:
    """The query strings of the query-type template variables (string or object form)."""
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


# --- Prometheus config and rules ------------------------------------------------------------------


def test_prometheus_config_passes_promtool() -> None:
    # Also loads and checks the rule files it names.
    assert_promtool_ok("check", "config", PROMETHEUS_CONFIG)


def test_alert_rules_pass_promtool() -> None:
    assert_promtool_ok("check", "rules", ALERTS)


def test_alert_rules_unit_tests_pass() -> None:
    """alerts_test.yml: the residual-risk alert is silent at 10m and firing at 11m (first rate() at 1m
    plus `for: 10m`), and the other alerts fire on time and only for the offending route/upstream."""
    assert_promtool_ok("test", "rules", ALERTS_TEST)


def test_expected_alerts_exist_with_their_hold_durations() -> None:
    alerts = {rule["alert"]: rule for rule in load_rules() if "alert" in rule}
    assert alerts["RvrResidualRiskHigh"]["for"] == "10m"
    assert 'component="residual"' in alerts["RvrResidualRiskHigh"]["expr"]
    assert alerts["RvrUpstreamErrorRateHigh"]["for"] == "5m"
    assert alerts["RvrCostMultiplierHigh"]["for"] == "15m"


def test_alert_and_recording_rules_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        unknown = promql_metric_names(rule["expr"]) - exported - recorded - PROMETHEUS_SYNTHETIC
        assert not unknown, f"rule {rule.get('alert') or rule.get('record')} uses {unknown}"


# --- Grafana dashboard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("panel_target", "expr"), [pytest.param(*pair, id=pair[0]) for pair in dashboard_exprs()]
)
def test_dashboard_expression_parses(panel_target: str, expr: str, tmp_path: Path) -> None:
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "dashboard", "rules": [
                {"record": "dashboard:expression:check", "expr": substitute_grafana_variables(expr)}
            ]}]}
        )
    )
    result = run_promtool("check", "rules", rule_file)
    assert result.returncode == 0, f"{panel_target}: {expr}\n{result.stdout}\n{result.stderr}"


def test_dashboard_uses_only_exported_metrics() -> None:
    exported = exported_metric_names()
    dashboard = load_dashboard()
    used: dict[str, set[str]] = {}
    for panel_target, expr in dashboard_exprs():
        used[panel_target] = promql_metric_names(substitute_grafana_variables(expr))
        assert used[panel_target], f"{panel_target} selects no metric: {expr}"
    for query in variable_queries(dashboard):
        match = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)\s*", query)
        assert match, f"unexpected variable query {query!r}"
        used[f"variable {query}"] = {match.group(1)}
    unknown = {where: names - exported for where, names in used.items() if names - exported}
    assert not unknown, f"metrics the proxy does not export: {unknown}"


def test_every_panel_has_a_query_on_the_dashboard_datasource() -> None:
    dashboard = load_dashboard()
    panels = query_panels(dashboard)
    assert panels
    for panel in panels:
        targets = panel.get("targets") or []
        assert targets and all(t.get("expr", "").strip() for t in targets), (
            f"panel {panel['title']!r} has no query"
        )
        # One datasource reference everywhere, so switching the variable switches every panel.
        for ref in [panel.get("datasource"), *(t.get("datasource") for t in targets)]:
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, (panel["title"], ref)


def test_dashboard_variables() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    route = variables["route"]
    assert route["type"] == "query"
    query = route["query"]["query"] if isinstance(route["query"], dict) else route["query"]
    assert query == "label_values(rvr_requests_total, route)"
    assert route["multi"] and route["includeAll"]

    datasource = variables["datasource"]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"
    # Its default is the provisioned datasource's uid.
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["current"]["value"] in {d["uid"] for d in provisioned}

    for panel in walk_panels(dashboard["panels"]):
        if panel.get("repeat"):
            assert panel["repeat"] in variables, panel["title"]


# Risks are shares of utility lost (0 to 1): every panel that plots one shows it as a percentage,
# so one residual never reads 0.02 in one panel and 2% in the next (issue 25).
RISK_METRICS = {"rvr_risk_sum", "rvr_risk_count", "rvr_risk_bucket", "rvr_calibrated_risk"}


def test_every_risk_panel_shows_risk_in_one_unit() -> None:
    risk_panels = {}
    for panel in query_panels(load_dashboard()):
        selected = set().union(*(promql_metric_names(substitute_grafana_variables(t["expr"]))
                                 for t in panel.get("targets", []) if t.get("expr")))
        if selected & RISK_METRICS:
            units = {panel["fieldConfig"]["defaults"].get("unit")}
            units |= {prop["value"] for override in panel["fieldConfig"].get("overrides", [])
                      for prop in override.get("properties", []) if prop["id"] == "unit"}
            risk_panels[panel["title"]] = units
    assert len(risk_panels) >= 4, risk_panels  # removed, decomposition, online vs calibrated, calibrated terms
    assert all(units == {"percentunit"} for units in risk_panels.values()), risk_panels


def test_grafana_provisioning_matches_compose_mounts() -> None:
    """The dashboard provider reads the folder compose mounts the dashboards into."""
    provider_path = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"][0]["options"]["path"]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts[provider_path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert "PROMETHEUS_URL" in grafana["environment"]  # used by the datasource provisioning file


def test_dashboard_parses_with_grafana_foundation_sdk() -> None:
    pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.models import dashboard as dashboard_model
    from grafana_foundation_sdk.models import prometheus

    # Panel and query types are decoded through plugins registered at runtime.
    plugins.register_default_plugins()

    def strip_nulls(value: Any) -> Any:
        # The SDK's from_json treats a present key as a value to decode; Grafana writes null
        # (e.g. the base threshold step) where it means "absent".
        if isinstance(value, dict):
            return {k: strip_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip_nulls(v) for v in value if v is not None]
        return value

    raw = strip_nulls(load_dashboard())
    parsed = dashboard_model.Dashboard.from_json(raw)
    assert parsed.uid == raw["uid"]
    assert len(parsed.panels or []) == len(raw["panels"])
    for panel, raw_panel in zip(parsed.panels or [], raw["panels"], strict=True):
        if raw_panel["type"] == "row":
            continue
        # Decoded as Prometheus queries, which needs the panel's datasource type.
        assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets or []), panel.title
        assert [t.expr for t in panel.targets or []] == [t["expr"] for t in raw_panel["targets"]]


# --- container and Kubernetes files ---------------------------------------------------------------


def test_route_config_is_a_valid_proxy_config() -> None:
    """The config compose mounts and the ConfigMap is generated from parses as the proxy parses it."""
    raw = yaml.safe_load((K8S / "config.yaml").read_text())
    config = parse_config(
        raw, environ={"RVR_KEY": "test-key", "UPSTREAM_API_KEY": "test-upstream", "REDIS_URL": "redis://r:6379/0"}
    )
    assert config.routes


def test_kubernetes_manifests_agree_with_each_other_and_the_image() -> None:
    # No cluster or kubeconform here: check the cross-references a typo would silently break.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    service = yaml.safe_load((K8S / "service.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    generated = {g["name"]: g["files"] for g in kustomization["configMapGenerator"]}

    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] == "/metrics"
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    (volume,) = pod["spec"]["volumes"]
    assert volume["configMap"]["name"] in generated
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert config_arg == f"{mount['mountPath']}/{generated[volume['configMap']['name']][0]}"

    dockerfile = DOCKERFILE.read_text()
    assert "EXPOSE 8000" in dockerfile
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["rvr-proxy", "serve", "--host", "0.0.0.0"]' in dockerfile


def _cmake_args_turn_native_off(text: str) -> bool:
    """Whether a `CMAKE_ARGS=...` in this text (bare or quoted) holds -DGGML_NATIVE=OFF."""
    return any("-DGGML_NATIVE=OFF" in value.strip("\"'").split()
               for value in re.findall(r"\bCMAKE_ARGS=(\"[^\"]*\"|'[^']*'|\S+)", text))


def test_dockerfile_builds_llama_cpp_for_any_cpu_not_the_build_hosts() -> None:
    """Issue 25: a native build dies with an illegal instruction where the CPU advertises AMX it
    does not allow (docs/operations.md §1); the image must be built as the README's run line builds."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())  # continuation lines joined
    build_stage = re.split(r"^FROM ", text, flags=re.MULTILINE)[1]  # the toolchain's stage: llama.cpp compiles here
    builds = [line for line in build_stage.splitlines()
              if line.startswith("RUN ") and "[local]" in line and re.search(r"\bpip (?:wheel|install)\b", line)]
    assert builds, "the build stage has no RUN line that builds the `local` extra"
    in_env = any(_cmake_args_turn_native_off(line) for line in build_stage.splitlines() if line.startswith("ENV "))
    for line in builds:
        assert in_env or _cmake_args_turn_native_off(line), f"llama.cpp is built for the build host's CPU: {line}"


K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to work on


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every object of every manifest kustomization.yaml lists, as (file, object)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        (resource, doc)
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / resource).read_text())
        if doc
    ]


@pytest.mark.parametrize(
    ("resource", "document"), [pytest.param(r, d, id=f"{r}:{d['kind']}") for r, d in k8s_documents()]
)
def test_kubernetes_manifest_is_valid_against_the_schema(resource: str, document: dict[str, Any]) -> None:
    """Offline, against the schemas kubernetes-validate ships; strict: an unknown field fails too."""
    import kubernetes_validate

    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_kubernetes_schema_check_is_live() -> None:
    import kubernetes_validate

    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kubernetes_scale_out_pieces_fit_together() -> None:
    """Shared state in Redis, an HPA on CPU, a PDB, probes, and a drain that fits the grace period."""
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_documents()}
    deployment = docs[("Deployment", "rvr-proxy")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    hpa = docs[("HorizontalPodAutoscaler", "rvr-proxy")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rvr-proxy"}
    assert hpa["minReplicas"] >= 2
    (target,) = hpa["metrics"]
    assert target["resource"]["name"] == "cpu"
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"], "CPU utilization needs a CPU request"

    pdb = docs[("PodDisruptionBudget", "rvr-proxy")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1

    # The drain: preStop pause, then SIGTERM and server.drain_s, all inside the grace period.
    config = parse_config(
        yaml.safe_load((K8S / "config.yaml").read_text()),
        environ={"RVR_KEY": "test-key", "UPSTREAM_API_KEY": "test-upstream", "REDIS_URL": "redis://r:6379/0"},
    )
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert int(pause[1]) + config.server.drain_s < pod["spec"]["terminationGracePeriodSeconds"]

    # Redis: the config asks for it, the pod is told where it is, and redis.yaml serves that name.
    assert config.server.state.backend == "redis"
    env = {e["name"]: e for e in container["env"]}
    redis_url = env["REDIS_URL"]["value"]
    redis_service = docs[("Service", "rvr-redis")]
    assert redis_url == f"redis://{redis_service['metadata']['name']}:{redis_service['spec']['ports'][0]['port']}/0"
    redis_pod = docs[("Deployment", "rvr-redis")]["spec"]["template"]
    assert redis_service["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()


def test_compose_runs_redis_and_drains() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    proxy_service, redis_service = services["proxy"], services["redis"]
    assert "redis" in proxy_service["depends_on"]
    assert proxy_service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert redis_service["image"].startswith("redis:")
    config = parse_config(
        yaml.safe_load((K8S / "config.yaml").read_text()),
        environ={"RVR_KEY": "k", "UPSTREAM_API_KEY": "u", "REDIS_URL": proxy_service["environment"]["REDIS_URL"]},
    )
    grace = proxy_service["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > config.server.drain_s


def compose_validator() -> Any:
    """The schema's `$schema` is `https://json-schema.org/draft-07/schema`, a spelling jsonschema
    does not map to a draft (it would fall back to the newest one), so draft 7 is chosen here."""
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_schema_fixture_is_the_official_file_unchanged() -> None:
    data = COMPOSE_SCHEMA.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # what `git hash-object` prints
    assert blob == COMPOSE_SCHEMA_SOURCE["git_blob"], "tests/fixtures/compose-spec.json differs from its source"
    schema = json.loads(data)
    assert schema["$schema"] == "https://json-schema.org/draft-07/schema"
    refs = re.findall(r'"\$ref":\s*"([^"]*)"', data.decode())
    assert refs and all(ref.startswith("#/") for ref in refs), "a remote $ref would need the network"


def test_compose_file_is_valid_against_the_compose_schema() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(compose)]
    assert errors == []


@pytest.mark.parametrize(
    ("where", "break_it"),
    [
        pytest.param("services/proxy", lambda c: c["services"]["proxy"].update(stop_grace_periods="40s"), id="misspelt-key"),
        pytest.param("services/proxy/depends_on", lambda c: c["services"]["proxy"].update(depends_on="redis"),
                     id="depends_on-not-a-list"),
        pytest.param("services/redis/command", lambda c: c["services"]["redis"].update(command={"redis-server": 1}),
                     id="command-a-mapping"),
        pytest.param("services/proxy/depends_on", lambda c: c["services"]["proxy"].update(
            depends_on={"redis": {"condition": "service_ready"}}), id="unknown-condition"),
        pytest.param("", lambda c: c.update(volume=c.pop("volumes")), id="unknown-top-level-key"),
    ],
)
def test_compose_schema_rejects_a_broken_compose_file(where: str, break_it: Callable[[dict[str, Any]], object]) -> None:
    """The schema check is live: each of these mistakes in our compose file is reported, at its place."""
    compose = yaml.safe_load(COMPOSE.read_text())
    break_it(compose)
    errors = list(compose_validator().iter_errors(compose))
    assert errors, "the broken compose file passed the schema"
    assert where in {"/".join(map(str, e.absolute_path)) for e in errors}


# --- the test helpers themselves -----------------------------------------------------------------


def test_promql_metric_names_tokenizer() -> None:
    expr = textwrap.dedent(
        """
        histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"x|y", le!="+Inf"}[5m])))
          / on (route) group_left sum without (kind) (rate(b_total[1m] offset 5m)) > bool 1e3
          or vector(1) unless c:recorded:rate5m
        """
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c:recorded:rate5m"}
    assert substitute_grafana_variables("rate(x{r=~\"$route\"}[$__rate_interval])") == (
        'rate(x{r=~"chat|default"}[1m])'
    )


_METRICS_SERVER = textwrap.dedent(
    """
    import sys
    from prometheus_client import start_http_server
    from proxy.telemetry import metrics

    metrics.REQUESTS.labels(route="deploy-test", strategy="passthrough", status="200").inc(3)
    metrics.RISK.labels(route="deploy-test", component="residual").observe(0.25)
    server, _ = start_http_server(0, addr="127.0.0.1")
    print(server.server_port, flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
    """
)


def test_running_prometheus_scrapes_a_prometheus_client_endpoint() -> None:
    if shutil.which("prometheus") is None:
        pytest.fail(
            "prometheus is not on PATH. Install the Debian package: "
            "`apt-get install -y --no-install-recommends prometheus`."
        )
    # A subprocess, so the counters incremented here never leak into other tests' REGISTRY.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-c", _METRICS_SERVER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.strip().isdigit(), f"metrics server did not start: {line!r}"
        with running_prometheus([f"127.0.0.1:{int(line)}"], scrape_interval="1s") as prom:
            result = prom.wait_for(
                'rvr_requests_total{route="deploy-test", status="200"}',
                lambda r: len(r) == 1 and float(r[0]["value"][1]) == 3.0,
                timeout=20,
            )
            assert result[0]["metric"]["job"] == "targets"
            mean = prom.query(
                'rvr_risk_sum{route="deploy-test", component="residual"}'
                ' / rvr_risk_count{route="deploy-test", component="residual"}'
            )
            assert [float(s["value"][1]) for s in mean] == [0.25]
            assert float(prom.query("up")[0]["value"][1]) == 1.0
        # The context manager stopped the server and removed its temp directory.
        assert prom.process.poll() is not None
        assert not prom.config_path.parent.exists()
    finally:
        assert server.stdin is not None
        server.stdin.close()  # the metrics server exits on EOF
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
