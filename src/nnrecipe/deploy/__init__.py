"""Deployment: export, quantisation, model cards (serving is not built yet)."""
