"""Pure manifest builders: custom resource in, Kubernetes objects out (no I/O, unit-tested)."""
