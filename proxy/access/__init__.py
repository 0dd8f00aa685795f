"""Who may call and how much: bearer-key authentication and per-key limits (rpm, tpm, daily
tokens, candidates per minute), counted in the shared state: reserved at a request's estimate
before it runs, settled at its cost. May import `proxy.config`, `proxy.state`, `proxy.telemetry`,
`proxy.upstream` (the allowance's estimates) and `proxy.errors`.
"""
