"""A motion condition for AnimateDiff's motion modules: the caption's motion as a track that grows with the frame.

    condition = MotionCondition.for_unet(motion_unet)       # zero-initialised: the UNet's output is unchanged
    handles = condition.attach(motion_unet)                  # hooks: reads the caption, conditions every module
    condition.save(folder / CONDITION_FILE); MotionCondition.load(path, motion_unet)

Why it exists: diffusers' motion modules attend over frames with no text (`MotionAdapter` builds them with
`cross_attention_dim=None`), so a caption's "moving left" reaches them only through what the image UNet's
cross-attention adds to each frame, the same in every frame; trained that way the world adapter moves shapes
smoothly but not the way the caption says (docs/world.md, "World motion"). MotionCtrl and CameraCtrl give the
temporal layers a per-frame signal instead, through a zero-initialised linear layer; this does the same with a
signal read from the caption:

1. a linear `head` reads a motion vector d = (dx, dy, growth) from the caption's text-encoder states (their mean
   over tokens: the motion words change the states from where they stand onwards, padding included), one per clip
   and per CFG branch (the empty caption learns d = 0);
2. frame f of F gets (tau * d, d) with tau running from -1 (first frame) to 1 (last): a displacement that grows
   with the frame, and the motion itself;
3. motion module k adds `layers[k]` of it (channels x 6, zero at the start) to its input projection's output, the
   same at every pixel, before its temporal attention.

A clip in FreeNoise windows is conditioned over its whole length (the modules' input projection sees every
frame; the windows are inside their attention), so a 32-frame clip makes one motion at half the speed per frame.
The file (`CONDITION_FILE` beside the adapter) is personae's own: no other loader knows this addition
(`personae animate` loads it from the adapter's folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

CONDITION_FILE = "motion-condition.safetensors"
FORMAT = "personae-motion-condition"


def motion_modules(unet) -> list:
    """The motion UNet's motion modules (AnimateDiffTransformer3D), in `modules()` order."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]


class MotionCondition(nn.Module):
    def __init__(self, text_width: int, channels: list[int]):
        super().__init__()
        self.head = nn.Linear(text_width, 3)
        self.layers = nn.ModuleList(nn.Linear(6, c) for c in channels)
        for layer in self.layers:  # the untrained condition leaves every motion module as it was
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.given: torch.Tensor | None = None  # training: the true motion per clip, instead of the head's reading
        self.read: torch.Tensor | None = None  # the head's reading of the last forward (clips x 3)
        self._d: torch.Tensor | None = None

    @classmethod
    def for_unet(cls, unet) -> MotionCondition:
        channels = [m.proj_in.out_features for m in motion_modules(unet)]
        if not channels:
            raise ValueError("the UNet has no motion modules")
        return cls(int(unet.config.cross_attention_dim), channels)

    def vectors(self, states: torch.Tensor) -> torch.Tensor:
        """d per caption: states (captions x tokens x width) -> captions x 3."""
        return self.head(states.mean(dim=1))

    def attach(self, unet) -> list:
        """Hooks on the motion UNet (reads the captions) and on every motion module's input projection."""
        modules = motion_modules(unet)
        if len(modules) != len(self.layers) or any(m.proj_in.out_features != layer.out_features
                                                   for m, layer in zip(modules, self.layers)):
            raise ValueError(f"the condition has {len(self.layers)} layers for {len(modules)} motion modules of "
                             "other widths: it was trained for another adapter")
        handles = [unet.register_forward_pre_hook(self._read, with_kwargs=True)]
        handles += [m.proj_in.register_forward_hook(lambda mod, args, out, k=k: self._add(k, out))
                    for k, m in enumerate(modules)]
        return handles

    def _read(self, unet, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        states = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        clips, frames = sample.shape[0], sample.shape[2]
        if states.shape[0] == clips * frames:  # one row per frame (the pipeline's layout): a clip's first frame
            states = states[::frames]
        self.read = self.vectors(states.to(self.head.weight.dtype))
        self._d = self.given if self.given is not None else self.read

    def _add(self, k: int, out: torch.Tensor) -> torch.Tensor:
        d = self._d.to(out.dtype)
        clips = d.shape[0]
        rows, frames, channels = out.shape  # (clips * pixels) x frames x channels
        tau = torch.linspace(-1.0, 1.0, frames, dtype=out.dtype, device=out.device)
        feature = torch.cat([tau[None, :, None] * d[:, None, :], d[:, None, :].expand(clips, frames, 3)], dim=-1)
        add = self.layers[k](feature)  # clips x frames x channels
        return (out.view(clips, rows // clips, frames, channels) + add[:, None]).view(rows, frames, channels)

    def save(self, path: str | Path) -> Path:
        from personae.models.folders import save_safetensors

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        return save_safetensors(state, path, metadata={"format": FORMAT, "version": "1"})

    @classmethod
    def load(cls, path: str | Path, unet) -> MotionCondition:
        """The condition in `path`, for (and attached to nothing yet) the motion UNet `unet`; ValueError if it does
        not fit it."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata, state = fh.metadata() or {}, {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors' own error type differs between its versions
            raise ValueError(f"{path} is not a safetensors file ({' '.join(str(exc).split())[:120]})") from None
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a personae motion condition (no '{FORMAT}' format in its header)")
        condition = cls.for_unet(unet)
        expected = {k: tuple(v.shape) for k, v in condition.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ValueError(f"{path} was trained for another adapter ({len(found)} tensors; this one needs "
                             f"{len(expected)} of other shapes)")
        condition.load_state_dict(state)
        return condition.to(device=unet.device, dtype=unet.dtype)
