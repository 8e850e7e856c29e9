"""Jobs: one call per user-facing task, writing its files; used by the CLI, the UI and the demo."""
