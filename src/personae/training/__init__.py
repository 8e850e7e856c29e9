"""The training loop, its checkpoints, validation images and export checks."""
