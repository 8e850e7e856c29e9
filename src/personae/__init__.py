"""personae: teach Stable Diffusion a person, a style or a framing from a few images, then use it."""

import os

# onnxruntime (1.30 on Linux) starts Microsoft's telemetry when imported: it writes a device-id database under
# ~/.cache/Microsoft, a log /tmp/mat-debug-PID.log, and uploads where it can reach the network. diffusers imports
# it whenever it loads a pipeline (its ONNX model class is among the loadable ones), so every personae process
# would. Off unless the user says otherwise; worker processes inherit the setting.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
