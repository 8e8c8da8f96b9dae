"""Shoal engine."""
