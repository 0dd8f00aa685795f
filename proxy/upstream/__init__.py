"""Reaching models: the upstream client (n-batching, retries, fallback, timeouts), the mapping
of upstream failures onto the proxy's errors, the stream tap, a request's allowance, chat
rendering for base models, and the `Services` a strategy is handed. May import `proxy.config`,
`proxy.telemetry`, `proxy.errors`, `proxy.pipeline.endpoints` (the endpoint records) and
`strategies.contract`.
"""
