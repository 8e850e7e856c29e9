"""The web UI (`personae ui`): Gradio pages over the job functions the CLI calls (a thin adapter, like cli/)."""
