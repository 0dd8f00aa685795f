"""Gold probes: probe runs of a route's gold items through the same pipeline as client requests,
the calibration and learned-selection state they feed, and the `rvr-proxy probe` command. May
import `proxy.pipeline.pipeline` (never the app), `proxy.config`, `proxy.state`,
`proxy.telemetry` and `strategies`.
"""
