"""Benchmarks (`make bench`): each prints a ratio measured in one run against a baseline or bound."""
