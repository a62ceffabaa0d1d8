"""Offline data for the embedded default: real English prose that ships with every Python."""

from saelens_gemmascope.data.stdlib_text import stdlib_split, stdlib_text, stdlib_token_dataset

__all__ = ["stdlib_split", "stdlib_text", "stdlib_token_dataset"]
