"""What the proxy tells operators: Prometheus metrics (the one declaration site), JSON log lines
with secrets scrubbed, the request record that turns an `Outcome` into both, and progress bars
for the CLI. May import `strategies.contract` and nothing of `proxy` but itself.
"""
