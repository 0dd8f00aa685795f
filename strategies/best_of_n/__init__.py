"""Adaptive best-of-N: the sampling loop (`loop`: batches, selection, stopping, risk) on a
request's plan and running state (`run`: sampling and verification), its stop rules, prompt
variants, panels, fusion (`fusing`) and the route settings. May import every other `strategies`
package.
"""
