"""Triton kernels of the ``triton`` backend, one file per op, each with its host-side launcher.

Importing this package imports triton; the registry only does so when the backend is chosen.
"""
