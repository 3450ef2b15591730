"""Evaluation and calibration text: named corpora from the data directory, text files, token windows."""
