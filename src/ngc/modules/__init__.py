"""The compressed modules (SPEC §1, §2) and the one place that swaps them into a model."""
