"""Evaluation: perplexity (SPEC §7); zero-shot tasks and speed come later."""
