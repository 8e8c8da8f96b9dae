"""Agent programs: the router schedules whole multi-turn programs (admit, pause, resume,
retain their KV between turns) and runs their tools in sandboxes."""
