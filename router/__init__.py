"""Shoal router."""
