"""Reaching models: the upstream client (n-batching, retries, fallback, timeouts) over the native
OpenAI-protocol client or litellm, the mapping of upstream failures onto the proxy's errors, the
stream tap, usage estimates, a request's allowance, and chat rendering for base models. May
import `proxy.config`, `proxy.telemetry`, `proxy.errors` and `strategies.contract`; the
`Services` that strategies are handed wrap it in `proxy.pipeline`.
"""
