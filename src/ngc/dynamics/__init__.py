"""Neuronal dynamics (SPEC §8): token-time stability, the depth decomposition, force relative to a reference."""
