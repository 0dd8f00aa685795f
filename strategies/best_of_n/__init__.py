"""Adaptive best-of-N: the sampling loop (batches, verification, selection, stopping, risk), its
stop rules, prompt variants and the route settings. May import every other `strategies`
package.
"""
