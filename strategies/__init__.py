"""The algorithms, pure: sampling, stop rules, prompt variants, verifiers, selection and risk.

Nothing here speaks HTTP or knows litellm, FastAPI or Prometheus: a strategy gets the outside
world as the plain async callables of `contract.Services` and returns one `contract.Outcome`.
`contract` is the shared vocabulary and a leaf (it imports nothing of the project); every other
module may import it, and none may import `proxy`. Packages: `best_of_n` (the adaptive loop),
`selection` (choosing among answer clusters), `risk` (estimators and gold calibration) and
`verifiers` (one module per kind).
"""
