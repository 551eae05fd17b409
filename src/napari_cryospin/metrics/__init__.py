"""Accuracy metrics: FSC, resolution, pose error after global alignment."""
