"""The verifier audit (`rvr-proxy audit`): gold pairs run through a route's verifiers with their
serving code, stored per configuration, reported, and enforced at start-up (`policy`). Mostly
off the request path. May import `proxy.config`, `proxy.upstream`, `proxy.routing`,
`proxy.state.files`, `proxy.local` and `strategies`.
"""
