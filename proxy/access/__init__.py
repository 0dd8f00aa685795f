"""Who may call and how much: bearer-key authentication and per-key limits (rpm, tpm, daily
tokens, candidates per minute), counted in the shared state. May import `proxy.config`,
`proxy.state`, `proxy.telemetry` and `proxy.errors`.
"""
