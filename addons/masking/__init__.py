"""Masking responses: mask specs, detectors, body formats and the masking addon."""
