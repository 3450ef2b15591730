"""Closed-form fitting of groups (SPEC §4) and the baselines' weightings (SPEC §6). Pure tensor math."""
