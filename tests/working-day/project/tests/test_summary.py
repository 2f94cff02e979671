import unittest

from report.summary import headline, summarize, words


class SummaryTest(unittest.TestCase):
    def test_most_frequent_first(self):
        self.assertEqual(summarize("b a b c b a", 2), "b=3, a=2")

    def test_ties_by_word(self):
        self.assertEqual(summarize("y x z", 3), "x=1, y=1, z=1")

    def test_case_is_ignored(self):
        self.assertEqual(words("The THE the"), ["the", "the", "the"])

    def test_apostrophes_stay_in_words(self):
        self.assertEqual(summarize("don't stop, don't", 1), "don't=2")

    def test_headline(self):
        self.assertEqual(headline("one two three four five six"), "one two three four five ...")
