"""Renderings of results: rich tables for terminals, plain dicts for JSON."""
