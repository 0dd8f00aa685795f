"""Configuration: the YAML parsed once at start-up into typed objects, secrets, and where the
settings come from (a file, the environment, the embedded model's default). Request handling
never reads files or the environment again. May import `strategies` (each strategy's settings)
and nothing else of `proxy`.
"""
