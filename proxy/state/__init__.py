"""State every worker and instance must agree on: one small async interface (`base`) with two
backends (`memory`, `redis`), what the proxy learns across requests and shares through it
(`learning`), and files several processes share (`files`: atomic writes, locks). May import
`proxy.config`, `proxy.telemetry`, `proxy.routing` and `strategies`.
"""
