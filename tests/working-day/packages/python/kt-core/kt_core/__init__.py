"""Word normalisation shared by the tally tools."""

__version__ = "1.0.0"


def normalize(word):
    return word.strip().strip(".,;:!?\"").lower()
