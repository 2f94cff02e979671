"""Ranks words by frequency, ties by the word itself."""

from collections import Counter

from kt_core import normalize

__version__ = "1.1.0"


def rank(words, n):
    counts = Counter(normalize(w) for w in words if normalize(w))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:n]
