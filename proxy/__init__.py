"""The HTTP service around the strategies: everything that speaks HTTP, reads config, calls
models, keeps shared state and exports metrics.

Subsystems are packages (see docs/architecture.md): `server` (the HTTP app), `pipeline` (parse →
prepare → run, shared by serving, probes and audits), `upstream` (reaching models), `access` (keys and their limits), `state` (what processes share),
`probes` (gold probes), `local` (the embedded model), `audit` (verifier audits), `telemetry`
(metrics, logs, records) and `config`. Three modules stay at the top because every subsystem
uses them: `errors` (the client-visible error tree), `routing` (routes built once from config)
and `cli`. `proxy` may import `strategies`; `strategies` never imports `proxy`.
"""
