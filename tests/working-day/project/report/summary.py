"""Summaries of texts: the most frequent words, and a headline."""

import re

from kt_tools import rank


def words(text):
    return re.findall(r"[a-z]+", text.lower())


def summarize(text, n=3):
    return ", ".join(f"{word}={count}" for word, count in rank(words(text), n))


def headline(text, length=5):
    first = text.split()
    return " ".join(first[:length]) + (" ..." if len(first) > length else "")
