"""Validation of tabular files against a dataset's JSON Schema (see validator.py)."""
