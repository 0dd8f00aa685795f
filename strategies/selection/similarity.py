"""Pairwise text similarity for consensus (MBR) and tie-breaking."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def token_f1_matrix(texts: Sequence[str]) -> np.ndarray:
    """Symmetric n×n matrix of bag-of-tokens F1; the diagonal is 1 (two empty texts are equal)."""
    bags = [Counter(tokens(t)) for t in texts]
    sizes = np.array([sum(b.values()) for b in bags], dtype=float)
    n = len(bags)
    sim = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            overlap = sum((bags[i] & bags[j]).values())
            total = sizes[i] + sizes[j]
            sim[i, j] = sim[j, i] = (2.0 * overlap / total) if total else 1.0
    return sim


def consensus(texts: Sequence[str]) -> np.ndarray:
    """Mean similarity of each text to all others, in [0, 1]; one text alone scores 1."""
    n = len(texts)
    if n < 2:
        return np.ones(n)
    sim = token_f1_matrix(texts)
    return (sim.sum(axis=1) - 1.0) / (n - 1)
