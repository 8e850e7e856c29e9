"""personae: teach Stable Diffusion a person, a style or a framing from a few images, then use it."""

__version__ = "0.1.0"
