"""Deployment: export, quantisation, model cards, and the HTTP server."""
