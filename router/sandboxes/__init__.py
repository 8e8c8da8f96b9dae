"""Tool sandboxes of agent programs: one manager, a local and a Kubernetes backend."""
