"""Speculative decoding and chain-of-thought acceleration."""
