"""Where the config comes from: a file, upstream settings in the environment, or the embedded model.

Precedence: `--config`/`RVR_CONFIG`, then `RVR_UPSTREAM_API_BASE` + `RVR_UPSTREAM_MODEL`, then the
embedded local model. Read once at start-up; request handling never looks here.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

import yaml

from proxy.config.settings import Config, ConfigError, load_config, parse_config

EMBEDDED_PLACEHOLDER = "EMBEDDED"
EMBEDDED_API_BASE_ENV = "RVR_EMBEDDED_API_BASE"  # set by the CLI once the embedded model serves


def configured_source(environ: Mapping[str, str]) -> str:
    if environ.get("RVR_CONFIG"):
        return "file"
    if environ.get("RVR_UPSTREAM_API_BASE") or environ.get("RVR_UPSTREAM_MODEL"):
        return "upstream_env"
    return "embedded"


def config_from_env(environ: Mapping[str, str]) -> Config:
    source = configured_source(environ)
    if source == "file":
        return load_config(environ["RVR_CONFIG"])
    if source == "upstream_env":
        return upstream_env_config(environ)
    api_base = environ.get(EMBEDDED_API_BASE_ENV)
    if not api_base:
        raise ConfigError("no config: pass --config FILE, set RVR_CONFIG, or start through `rvr-proxy serve`")
    return embedded_config(api_base)


def embedded_config(api_base: str) -> Config:
    text = resources.files("proxy.config").joinpath("default_config.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    for upstream in raw["upstreams"]:
        if upstream["litellm_params"].get("api_base") == EMBEDDED_PLACEHOLDER:
            upstream["litellm_params"]["api_base"] = api_base
    return parse_config(raw)


def upstream_env_config(environ: Mapping[str, str]) -> Config:
    """One upstream from the environment, served plain (`<model>`) and best-of-N (`<model>-best`)."""
    model = environ.get("RVR_UPSTREAM_MODEL")
    api_base = environ.get("RVR_UPSTREAM_API_BASE")
    if not model:
        raise ConfigError("RVR_UPSTREAM_MODEL is required with RVR_UPSTREAM_API_BASE (e.g. openai/gpt-4o-mini)")
    params: dict[str, str] = {"model": model}
    if api_base:
        params["api_base"] = api_base
    if environ.get("RVR_UPSTREAM_API_KEY"):
        params["api_key"] = "os.environ/RVR_UPSTREAM_API_KEY"
    alias = model.split("/", 1)[-1]
    raw = {
        "upstreams": [{"name": "upstream", "litellm_params": params}],
        "routes": [
            {"model": alias, "upstream": "upstream", "strategy": {"name": "passthrough"}},
            {"model": f"{alias}-best", "upstream": "upstream", "strategy": {"name": "best_of_n", "max_n": 8}},
        ],
    }
    return parse_config(raw, dict(environ))
