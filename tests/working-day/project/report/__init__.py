"""Summaries of texts for the weekly report."""
