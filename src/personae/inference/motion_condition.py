"""A motion condition for AnimateDiff's motion modules: the caption's motion as a track that grows with the frame.

    condition = MotionCondition.for_unet(motion_unet, tokenizer)  # zero-initialised: the UNet's output is unchanged
    handles = condition.attach(motion_unet)                  # hooks: condition every motion module
    condition.given = condition.read(tokenizer, [prompt])    # the prompt's motion, for the pipeline call
    condition.save(folder / CONDITION_FILE); MotionCondition.load(path, motion_unet, tokenizer)

Why it exists: diffusers' motion modules attend over frames with no text (`MotionAdapter` builds them with
`cross_attention_dim=None`), so a caption's "moving left" reaches them only through what the image UNet's
cross-attention adds to each frame, the same in every frame; trained that way the world adapter moves shapes
smoothly but not the way the caption says (docs/world.md, "World motion"). MotionCtrl and CameraCtrl give the
temporal layers a per-frame signal instead, through a zero-initialised linear layer; this does the same with a
signal read from the caption:

1. the `head` reads a motion vector d = (dx, dy, growth) from the caption's words: a sum over its tokens of one
   learnt vector per token of the tokenizer's vocabulary (zero for tokens training never saw, the empty caption
   reads 0), set before the pipeline runs (`condition.given = condition.read(tokenizer, prompts)`); the
   classifier-free-guidance branch of the negative prompt gets d = 0. Why not the text encoder's states: on the
   world model their pooled forms do not separate the six motions on held-out colours (linear and small attention
   heads: 16-59 % of 64 captions; the token bag: all of them), and reading tokens keeps the head out of the UNet;
2. frame f of F gets (tau * d, d) with tau running from -1 (first frame) to 1 (last): a displacement that grows
   with the frame, and the motion itself;
3. motion module k adds `layers[k]` of it (channels x 6, zero at the start) to its input projection's output, the
   same at every pixel, before its temporal attention;
4. only while the timestep is at least `from_timestep`, in training and sampling alike (a clip below it gets
   d = 0): the noisy steps set the layout and so the motion, and the last steps, which draw a subject's details,
   run as the plain adapter, following the motion already in the latents. Conditioned there too, the condition
   turned a taught star (a shape training never saw) into world shapes (docs/world.md).

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


def base_vocab_size(tokenizer) -> int:
    """The tokenizer's vocabulary before any added tokens (the head's rows)."""
    return int(tokenizer.vocab_size)


def motion_modules(unet) -> list:
    """The motion UNet's motion modules (AnimateDiffTransformer3D), in `modules()` order."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    return [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]


class MotionCondition(nn.Module):
    def __init__(self, vocab_size: int, channels: list[int], from_timestep: int = 0):
        super().__init__()
        self.from_timestep = int(from_timestep)  # clips at a lower timestep get d = 0
        self.head = nn.EmbeddingBag(vocab_size, 3, mode="sum")
        nn.init.zeros_(self.head.weight)  # a token training never saw adds nothing
        self.layers = nn.ModuleList(nn.Linear(6, c) for c in channels)
        for layer in self.layers:  # the untrained condition leaves every motion module as it was
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.given: torch.Tensor | None = None  # d per clip (prompts x 3) for the next forward passes; None: 0

    @classmethod
    def for_unet(cls, unet, tokenizer, from_timestep: int = 0) -> MotionCondition:
        channels = [m.proj_in.out_features for m in motion_modules(unet)]
        if not channels:
            raise ValueError("the UNet has no motion modules")
        return cls(base_vocab_size(tokenizer), channels, from_timestep)

    def token_ids(self, tokenizer, prompts: list[str]) -> list[list[int]]:
        """Each prompt's tokens in the tokenizer's own vocabulary, without start / end tokens; tokens added to it
        (textual-inversion words) are not the head's, and are left out."""
        size = self.head.num_embeddings
        return [[i for i in ids if i < size] for ids in
                tokenizer(list(prompts), add_special_tokens=False, truncation=False).input_ids]

    def read(self, tokenizer, prompts: list[str] | None = None, ids: list[list[int]] | None = None) -> torch.Tensor:
        """d per prompt (prompts x 3), from the prompts or their `token_ids`."""
        ids = self.token_ids(tokenizer, prompts) if ids is None else ids
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=self.head.weight.device)
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]], device=flat.device).cumsum(0)
        return self.head(flat, offsets)

    def attach(self, unet) -> list:
        """Hooks on the motion UNet (picks each row's d) and on every motion module's input projection."""
        modules = motion_modules(unet)
        if len(modules) != len(self.layers) or any(m.proj_in.out_features != layer.out_features
                                                   for m, layer in zip(modules, self.layers)):
            raise ValueError(f"the condition has {len(self.layers)} layers for {len(modules)} motion modules of "
                             "other widths: it was trained for another adapter")
        handles = [unet.register_forward_pre_hook(self._rows, with_kwargs=True)]
        handles += [m.proj_in.register_forward_hook(lambda mod, args, out, k=k: self._add(k, out))
                    for k, m in enumerate(modules)]
        return handles

    def _rows(self, unet, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        clips = sample.shape[0]
        d = self.given if self.given is not None else torch.zeros(1, 3)
        d = d.to(device=sample.device, dtype=self.layers[0].weight.dtype)
        if len(d) * 2 == clips:  # classifier-free guidance: [negative, positive], as diffusers' pipelines order them
            d = torch.cat([torch.zeros_like(d), d])
        elif len(d) == 1:
            d = d.expand(clips, 3)
        elif len(d) != clips:
            raise ValueError(f"the motion condition was given {len(d)} prompts for {clips} clips")
        timestep = torch.as_tensor(args[1] if len(args) > 1 else kwargs["timestep"], device=sample.device).flatten()
        on = (timestep >= self.from_timestep).to(d.dtype).expand(clips)  # one timestep for all clips, or one each
        self._d = d * on[:, None]

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
        return save_safetensors(state, path, metadata={"format": FORMAT, "version": "1",
                                                       "from_timestep": str(self.from_timestep)})

    @classmethod
    def load(cls, path: str | Path, unet, tokenizer) -> MotionCondition:
        """The condition in `path`, for (and attached to nothing yet) the motion UNet `unet` and the model's
        tokenizer; ValueError if it does not fit them."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata, state = fh.metadata() or {}, {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors' own error type differs between its versions
            raise ValueError(f"{path} is not a safetensors file ({' '.join(str(exc).split())[:120]})") from None
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a personae motion condition (no '{FORMAT}' format in its header)")
        try:
            from_timestep = int(metadata.get("from_timestep", "0"))
        except ValueError:
            raise ValueError(f"{path} has a broken header: from_timestep '{metadata['from_timestep']}' is not a "
                             "whole number") from None
        condition = cls(int(state.get("head.weight", torch.zeros(0, 3)).shape[0]),
                        [m.proj_in.out_features for m in motion_modules(unet)], from_timestep)
        expected = {k: tuple(v.shape) for k, v in condition.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ValueError(f"{path} was trained for another adapter ({len(found)} tensors; this one needs "
                             f"{len(expected)} of other shapes)")
        if condition.head.num_embeddings != base_vocab_size(tokenizer):
            raise ValueError(f"{path} reads a vocabulary of {condition.head.num_embeddings} tokens; this model's "
                             f"tokenizer has {base_vocab_size(tokenizer)}: it was trained for another model")
        condition.load_state_dict(state)
        return condition.to(device=unet.device, dtype=unet.dtype)
