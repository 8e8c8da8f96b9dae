"""Shoal crds."""
