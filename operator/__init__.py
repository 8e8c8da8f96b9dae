"""Shoal operator."""
