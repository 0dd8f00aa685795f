"""Rational value risk: per-request estimators of the candidate, prompt and verifier terms, their
gold-anchored calibration (PPI++), gold checkers for probe items, and the statistics of verifier
audits. May import `strategies.contract`, `strategies.answers`, `strategies.selection` and
`strategies.safe_regex`.
"""
