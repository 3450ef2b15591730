"""Calibration statistics (SPEC §4): streamed second moments, ASVD channel scales, Fisher information."""
