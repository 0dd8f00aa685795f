"""One request's way from a client's JSON body to an `Outcome`, below the HTTP app.

The request models and their checks (`requests`), the two generation endpoints as data
(`endpoints`), the `Services` a strategy is handed for one request (`services`), the
parse → prepare → run steps (`pipeline`) and the low-confidence fallback. Serving
(`proxy.server`), gold probes (`proxy.probes`) and verifier audits (`proxy.audit`) all come
through here, so a probe or an audit is checked, capped and charged as a client request is.
May import `proxy.upstream`, `proxy.routing`, `proxy.state`, `proxy.config`, `proxy.telemetry`,
`proxy.errors` and `strategies`; never `proxy.server`, `proxy.probes` or `proxy.audit`.
"""
