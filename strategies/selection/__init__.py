"""Choosing one answer: verifier views combined into one ranking (`weighted`), candidates grouped
into answer clusters (`clusters`), learned P(correct) per cluster (`learned`), knockout
tournaments (`knockout`) and the route's mode applied to a request (`choice`). May import
`strategies.contract`, `strategies.answers` and `strategies.verifiers`' settings.
"""
