"""`rvr-proxy serve | check-config | probe | bench | audit | fetch-audit-data`."""

from __future__ import annotations

import argparse
import json
import logging
import logging.config
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map at import

from proxy.audit import command as verifier_audit  # noqa: E402
from proxy.config.settings import Config, ConfigError, build_strategy_of, call_ceiling, load_config  # noqa: E402
from proxy.config.source import EMBEDDED_API_BASE_ENV, config_from_env, configured_source  # noqa: E402
from proxy.state.local import LOCAL_STATE_ENV  # noqa: E402
from proxy.telemetry.logs import log_config  # noqa: E402

log = logging.getLogger("rvr_proxy")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:  # its options belong to the script, not to argparse here
        rest = args_list[1:]
        return run_bench(rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(
        prog="rvr-proxy", description="OpenAI-compatible proxy that mitigates rational value risk."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the OpenAI-compatible API")
    serve.add_argument("--config", help="YAML config file (default: $RVR_CONFIG, else the embedded model)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config file without serving")
    check.add_argument("file")
    prober = sub.add_parser("probe", help="run a route's gold probe set once and print the calibration table")
    prober.add_argument("--config", required=True, help="YAML config file")
    prober.add_argument("--route", required=True, help="the route (model name) to probe")
    prober.add_argument("--items", type=int, help="how many items (default: the whole set once)")
    prober.add_argument("--out", help="write the gold records as JSON lines to this file")
    bench = sub.add_parser("bench", help="run the real-model benchmark (bench/real_model.py)")
    bench.add_argument("args", nargs=argparse.REMAINDER)
    verifier_audit.add_commands(sub)
    args = parser.parse_args(args_list)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "probe":
        return probe(args)
    if args.command in verifier_audit.COMMANDS:
        return verifier_audit.main(args)
    return serve_command(args)


def check_config(path: str) -> int:
    try:
        config = validate(path)
    except ConfigError as exc:
        message = str(exc)  # errors in reading the file name it already
        print(message if message.startswith(path) else f"{path}: {message}", file=sys.stderr)
        return 2
    print(f"{path}: ok")
    for route in config.routes:  # what one request can cost at most
        budget = route.strategy.token_budget()
        tokens = f", at most {budget} upstream tokens" if budget is not None else ""
        print(f"  route {route.model}: at most {call_ceiling(config, route)} upstream calls per request{tokens}")
    return 0


def probe(args: argparse.Namespace) -> int:
    logging.config.dictConfig(log_config("warning"))
    try:
        config = validate(args.config)
    except ConfigError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    found = next((r for r in config.routes if r.model == args.route), None)
    problem = None
    if found is None:
        problem = f"no route {args.route!r}; routes: {[r.model for r in config.routes]}"
    elif found.probes is None:
        problem = f"route {args.route!r} has no `probes` block"
    elif args.items is not None and args.items < 1:
        problem = "--items must be at least 1"
    if problem is not None:
        print(f"rvr-proxy probe: {problem}", file=sys.stderr)
        return 2
    from proxy.probes.command import probe_command
    from proxy.server.app import Proxy

    proxy = Proxy(config)  # built as serving builds it: the same checks, state and pipeline
    return probe_command(proxy.probe_runner(args.route), proxy.selection.get(args.route), args.items, args.out)


def validate(path: str) -> Config:
    """Parse the file and build every route's strategy, so verifier and variant specs are
    checked too. Without litellm, whose import alone took most of check-config's 8-13 s."""
    config = load_config(path)
    for i, route in enumerate(config.routes):
        build_strategy_of(route, f"routes.{i}")
    return config


def serve_command(args: argparse.Namespace) -> int:
    logging.config.dictConfig(log_config(args.log_level))
    if args.config:
        os.environ["RVR_CONFIG"] = args.config
    host = None
    try:
        if configured_source(os.environ) == "embedded":
            host = start_embedded()
        from proxy.routing import Router

        config = config_from_env(os.environ)
        Router(config)  # fail fast, before any worker starts
        verifier_audit.check_required(config)
    except ConfigError as exc:
        print(f"rvr-proxy: {exc}", file=sys.stderr)
        _stop(host)
        return 2
    except EmbeddedUnavailable as exc:
        print(f"rvr-proxy: {exc}", file=sys.stderr)
        return 2
    metrics_dir = _private_metrics_dir(args.workers)
    if metrics_dir is not None and config.server.state.backend == "memory":
        # Without Redis, the workers of this instance share one file, so key limits and what
        # routes learn hold across them as in one process (proxy/state/local.py).
        os.environ[LOCAL_STATE_ENV] = os.path.join(metrics_dir, "state.sqlite3")
    from proxy.server.connections import HEADER_TIMEOUT_ENV

    os.environ[HEADER_TIMEOUT_ENV] = str(config.server.read_timeout_s)  # workers read it
    try:
        import uvicorn

        from proxy.server import drain

        drain.run(uvicorn.Config(
            "proxy.server.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,
            log_level=args.log_level,
            log_config=log_config(args.log_level),
            timeout_graceful_shutdown=config.server.drain_s,  # type: ignore[arg-type]  # a float works
            # h11, not httptools: its header buffer has a cap, and BoundedH11Protocol a deadline
            http="proxy.server.connections:BoundedH11Protocol",
            h11_max_incomplete_event_size=config.server.max_header_bytes,
        ))
    finally:
        _stop(host)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


class EmbeddedUnavailable(RuntimeError):
    pass


def start_embedded() -> object:
    from proxy.local.model import EmbeddedModelError, embedded_available

    problem = embedded_available()
    if problem is not None:
        raise EmbeddedUnavailable(problem)
    from proxy.local.file import stderr_progress
    from proxy.local.host import EmbeddedHost
    from proxy.local.model import EmbeddedModel

    # Per-token logits cost ~4x prompt time and GBs of memory; only keep them when asked for,
    # since no default route needs them (a passthrough request asking logprobs then fails).
    logprobs = os.environ.get("RVR_EMBEDDED_LOGPROBS", "").lower() in ("1", "true", "yes")
    # The first run writes the 253 MB model file before anything answers: show that it moves.
    host = EmbeddedHost(EmbeddedModel(logits_all=logprobs, progress=stderr_progress()))
    log.info('{"event": "embedded_model_starting"}')
    try:
        api_base = host.start()
    except (EmbeddedModelError, TimeoutError) as exc:
        host.stop()
        raise EmbeddedUnavailable(f"the embedded model did not start: {exc}") from None
    os.environ[EMBEDDED_API_BASE_ENV] = api_base
    log.info('{"event": "embedded_model_ready", "api_base": "%s"}', api_base)
    return host


def _stop(host: object | None) -> None:
    if host is not None:
        host.stop()  # type: ignore[attr-defined]


def _private_metrics_dir(workers: int) -> str | None:
    """Workers sum their counters through files; each instance gets its own fresh directory,
    so two proxies on one host never wipe each other's."""
    if workers <= 1:
        return None
    path = tempfile.mkdtemp(prefix=f"rvr-proxy-metrics-{os.getpid()}-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    log.info(json.dumps({"event": "multiprocess_metrics_dir", "path": path}))
    return path


# What bench/real_model.py imports from the `bench` extra (pyproject.toml), by import name: it
# imports them only once the embedded model is up, so without this check a missing one ended
# the run minutes in, in a traceback.
BENCH_MODULES = ("openai", "reasoning_gym", "matplotlib", "tqdm")


def run_bench(argv: Sequence[str]) -> int:
    import importlib.util
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "real_model.py"
    if not script.exists():
        print("rvr-proxy bench: bench/real_model.py is part of the source checkout; run it from there", file=sys.stderr)
        return 2
    missing = [name for name in BENCH_MODULES if importlib.util.find_spec(name) is None]
    if missing and not {"-h", "--help"} & set(argv):  # the help needs none of them
        print(f"rvr-proxy bench: needs the `bench` extra (missing: {', '.join(missing)}); "
              "install it from the checkout with: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
