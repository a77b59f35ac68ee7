"""Test-suite settings: property tests draw the same examples on every run (repeatable CI)."""

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.load_profile("repeatable")
