"""Mixed precision in training: the frozen weights in half, and saves at full precision.

With train.mixed_precision fp16 or bf16, the UNet and text-encoder weights that do not train are stored in that
type: SD-1.5's 4.0 GB of frozen fp32 weights become 2.0 GB, which decides whether a LoRA run fits a 6-8 GB GPU.
What trains (LoRA matrices, a DreamBooth UNet, an embedding table) stays fp32, and the forward runs under
autocast, as kohya's trainers and diffusers' train_text_to_image_lora.py do. The VAE keeps fp32 weights (0.3 GB;
they decode the saves' images) and encodes the training images under autocast in half, unless train.no_half_vae
(training/setup.LatentCache).

Saves (exports, their checks, validation images) run at full precision, as the files are loaded elsewhere:
`full_precision` takes away accelerate's autocast wrapper from the trained modules' forward for the time of a
save, and puts the base model's own fp32 weights back from its files (so a DreamBooth model writes its untouched
text encoder exactly, and a LoRA is checked on the base users load it onto); after it, the weights are halved
again, to the same values as before, and the wrapper is back.

`train.full_bf16` (kohya's --full_bf16) keeps what trains in bf16 too (`halved_trained`): its gradients and the
optimizer's state follow its type. Saves see it in fp32 (exactly: every bf16 value is an fp32 one).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from personae.errors import UserError
from personae.models.resolve import ALIGNMENT

PARTS = ("unet", "text_encoder")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def halvable(pipe) -> dict[str, torch.nn.Parameter]:
    """The parameters mixed precision stores in half, by name ("unet.<name>"): every frozen floating-point one of
    the UNet and the text encoder. A text encoder whose token embeddings train (textual inversion, pivotal) stays
    fp32: its layer norms would take the fp32 embeddings with half weights, which CPU autocast does not reconcile
    (diffusers' textual inversion script keeps it fp32 too)."""
    parts = [part for part in PARTS if part != "text_encoder" or not token_table(pipe).requires_grad]
    return {f"{part}.{name}": p for part in parts for name, p in getattr(pipe, part).named_parameters()
            if not p.requires_grad and p.is_floating_point()}


def halved(pipe, mixed_precision: str) -> dict[str, torch.nn.Parameter]:
    """Store the `halvable` parameters in `mixed_precision`'s type ("no": none); returns them, for
    `full_precision`."""
    dtype = DTYPES.get(mixed_precision)
    if dtype is None:
        return {}
    frozen = halvable(pipe)
    with torch.no_grad():
        for p in frozen.values():
            p.data = p.data.to(dtype)
    return frozen


def token_table(pipe) -> torch.nn.Parameter:
    """The text encoder's token embeddings: trained whole by textual inversion and pivotal, and kept fp32."""
    return pipe.text_encoder.get_input_embeddings().weight


def halved_trained(pipe, params: list[torch.nn.Parameter], full_bf16: bool) -> list[torch.nn.Parameter]:
    """kohya's --full_bf16: the trained parameters in bf16 too (so their gradients and the optimizer's state are);
    returns them, for `full_precision` (bf16 to fp32 and back is exact). The text encoder's token table stays fp32
    (textual inversion, pivotal): all of it is a parameter, and rounding it would change every word's vector, not
    only the new tokens' the exports carry."""
    if not full_bf16:
        return []
    half = [p for p in params if p is not token_table(pipe)]
    with torch.no_grad():
        for p in half:
            p.data = p.data.to(torch.bfloat16)
    return half


def _base_name(name: str) -> str:
    """The parameter's name in the base model: adapters wrap the layer they change as `<layer>.base_layer`."""
    return name.replace(".base_layer.", ".")


@contextmanager
def plain_forward(modules):
    """The modules' own forward inside the block: accelerate's prepare wraps a module's forward in autocast under
    mixed precision (keeping the original as `_original_forward`), which would draw a save's images in half."""
    wrapped = [(m, m.__dict__["forward"]) for m in modules if "_original_forward" in m.__dict__]
    for m, _ in wrapped:
        m.forward = m._original_forward
    try:
        yield
    finally:
        for m, forward in wrapped:
            m.forward = forward


@contextmanager
def full_precision(pipe, frozen: dict[str, torch.nn.Parameter], load_base, trained: list = ()):
    """`pipe` at full precision inside the block: its modules' own forward, the halved parameters (`frozen`) with
    the base model's fp32 values (`load_base(components=..., mapped=True)`: a fresh pipeline of it, given the
    parts it need not read), and the trained ones kept in bf16 (`trained`, full_bf16) in fp32; all halved again
    after it."""
    with plain_forward([getattr(pipe, part) for part in PARTS]), _upcast(trained):
        if not frozen:
            yield
            return
        with _fp32_values(pipe, frozen, load_base):
            yield


@contextmanager
def _upcast(params: list):
    dtypes = [p.dtype for p in params]
    with torch.no_grad():
        for p in params:
            p.data = p.data.float()
    try:
        yield
    finally:
        with torch.no_grad():
            for p, dtype in zip(params, dtypes):
                p.data = p.data.to(dtype)


@contextmanager
def _fp32_values(pipe, frozen: dict[str, torch.nn.Parameter], load_base):
    unread = {name: getattr(pipe, name) for name in ("vae", *PARTS)
              if not any(n.startswith(f"{name}.") for n in frozen)}
    # read from the files: only the parts that were halved, left as the files' mapped views (taken as read)
    base = load_base(components=unread, mapped=True)
    original = {f"{part}.{name}": p for part in PARTS for name, p in getattr(base, part).named_parameters()}
    missing = [name for name in frozen if _base_name(name) not in original]
    if missing:
        raise RuntimeError(f"the base model has no weight for {missing[:3]}: cannot put the fp32 weights back")
    dtype = next(iter(frozen.values())).dtype
    changed = [name for name, p in frozen.items()
               if not torch.equal(original[_base_name(name)].data.to(p.device, dtype), p.data)]
    if changed:  # checked before anything is swapped: the run can go on from its last checkpoint
        raise UserError(f"The base model's files changed while this run trained ({changed[0]} and "
                        f"{len(changed) - 1} more differ from the weights it started from), so its exports cannot be "
                        "written on them.", "Put the base model back as it was, then continue with "
                        "`personae train JOB.yaml --resume`.")
    with torch.no_grad():  # one weight at a time: its half copy is freed as its fp32 one is made
        for name, p in frozen.items():
            value = original[_base_name(name)].data.to(p.device, torch.float32)
            # a view at an odd offset of a mapped file gets aligned memory of its own (models/resolve.aligned)
            p.data = value.clone() if value.device.type == "cpu" and value.data_ptr() % ALIGNMENT else value
    del base, original
    try:
        yield
    finally:
        with torch.no_grad():
            for p in frozen.values():
                p.data = p.data.to(dtype)
