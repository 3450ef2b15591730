"""Refinement after the closed form (SPEC §5); the factor structure and parameter count never change."""
