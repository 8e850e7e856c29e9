"""How much memory a training run needs, said before its first step; on a GPU that clearly lacks it, a refusal
that names the switch that would make it fit.

    estimate = estimate_training(pipe, trained_params, job, (width, height), text_encoder_trains=False)
    on_event(Message(estimate.summary()))   # "memory: about 6.2 GB at batch 1, 256x256 px; with gradient ..."
    check_fits(estimate, free_memory(device))   # UserError when clearly too little is free (CUDA only)

The model, in bytes (each term printed by `MemoryEstimate.parts`):

  weights      every parameter of the UNet, text encoder and VAE, at 4 bytes; with mixed precision (fp16 /
               bf16) the frozen UNet and text-encoder ones at 2 (training/precision.py: kohya's and diffusers'
               LoRA scripts store them so too)
  training     per trained parameter: its gradient (4) + the optimizer's state (AdamW 8, 8-bit AdamW 2,
               Prodigy 16, Lion 4 (one momentum), Adafactor at most 4: a matrix keeps only its row and column
               means) + an EMA copy (4) when ema is on; with full_bf16 the trained weight, its gradient, its EMA
               and a 32-bit optimizer state take half (not the token table's, which stays fp32)
  activations  what autograd keeps from the forward pass for the backward pass. Not guessed: the UNet (and the
               text encoder when it trains) runs once on PyTorch's meta device (shapes without storage, no
               arithmetic) at the run's batch and size, with the real module tree, its adapters and which
               parameters train, and every tensor saved for backward is counted once (parameters excluded).
               Attention is counted as the fused kernels (flash / memory-efficient) store it: q, k, v, the
               output and one log-sum-exp per query, not the score matrix. With gradient checkpointing the
               count is the blocks' inputs plus the largest single block, recomputed during backward.
               Mixed precision (fp16 / bf16) halves it.
  transient    the gradients flowing backward: one more copy of the largest saved tensor, x2 as headroom
  overhead     0.6 GB: the CUDA context and allocator slack (on a GPU) or the Python libraries (on the CPU)

A save (`MemoryEstimate.saving`) writes and checks the exports at full precision: every weight is fp32 for its
time (under mixed precision too: training/precision.full_precision), beside the optimizer's state and the EMA (the
gradients are freed by then) and the overhead. The reload checks of adapters and embeddings borrow those weights
(training/verify.py); a whole exported model (DreamBooth's folder and single file) is loaded once more, in fp32
(`reloads_model`). Its largest render is a validation image at the model's own size (512 px for SD-1.5): the
UNet's forward with CFG and the VAE's decode, whose tensors are counted on the meta device as they are made and
dropped (`inference_bytes`). The run's figure (`peak`) is the larger of its steps and its saves.

The arithmetic (`MemoryEstimate`, `fitting_switch`) is pure; `activation_bytes` does the meta-device run.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from personae.config.train import TrainJob
from personae.errors import UserError
from personae.training.precision import halvable, token_table

GB = 1024**3
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "lion": 4, "adafactor": 4}  # state per trained parameter
OVERHEAD = int(0.6 * GB)
CLEARLY = 1.25  # refuse only when the estimate exceeds the free memory by more than its own uncertainty


@dataclass(frozen=True)
class MemoryEstimate:
    frozen: int  # parameters that do not train
    trained: int  # parameters that do
    activations: int  # bytes kept for backward, without gradient checkpointing, at `batch`
    checkpointed: int  # the same with gradient checkpointing
    largest: int  # the largest single saved tensor, bytes
    batch: int
    size: tuple[int, int]  # (width, height) in pixels
    optimizer: str = "adamw"
    ema: bool = False
    mixed_precision: str = "no"
    checkpointing: bool = False
    halvable: int = 0  # of the frozen: those mixed precision stores in half (training/precision.py)
    full_bf16: bool = False  # the trained ones in bf16 too, with their gradients and optimizer state
    kept_fp32: int = 0  # of the trained: those full_bf16 leaves in fp32 (the token table, training/precision.py)
    reloads_model: bool = False  # a save's check loads a whole exported model beside the run's (DreamBooth)
    inference: int = 0  # the tensors of a save's largest render at once (a validation image, fp32)

    @property
    def halves(self) -> bool:
        return self.mixed_precision in ("fp16", "bf16")

    def _trained_counts(self) -> dict[int, int]:
        """The trained values by the bytes of their weight (full_bf16: 2, but for what it keeps fp32)."""
        in_bf16 = self.trained - self.kept_fp32 if self.full_bf16 else 0
        return {4: self.trained - in_bf16, 2: in_bf16}

    def _kept(self, gradients: bool) -> int:
        """Per trained parameter: its gradient (when `gradients`), the optimizer's state (a 32-bit state in the
        weight's type), its EMA copy."""
        kept = 0
        for size, n in self._trained_counts().items():
            state = OPTIMIZER_BYTES[self.optimizer] * (4 if self.optimizer == "adamw8bit" else size) // 4
            kept += ((size if gradients else 0) + state + (size if self.ema else 0)) * n
        return kept

    def parts(self, checkpointing: bool | None = None) -> dict[str, int]:
        checkpointing = self.checkpointing if checkpointing is None else checkpointing
        half = 0.5 if self.halves else 1.0
        weights = (4 * self.frozen + sum(size * n for size, n in self._trained_counts().items())
                   - (2 * self.halvable if half < 1 else 0))
        training = self._kept(gradients=True)
        return {"weights": weights, "training": training,
                "activations": int(half * (self.checkpointed if checkpointing else self.activations)),
                "transient": int(2 * half * self.largest), "overhead": OVERHEAD}

    def total(self, checkpointing: bool | None = None) -> int:
        return sum(self.parts(checkpointing).values())

    def saving(self) -> int:
        """A save's peak: every weight at fp32 (twice when a whole exported model is loaded back), the optimizer's
        state and the EMA, its largest render."""
        weights = 4 * (self.frozen + self.trained) * (2 if self.reloads_model else 1)
        return weights + self._kept(gradients=False) + self.inference + OVERHEAD

    def peak(self) -> int:
        """The run's peak: its steps, or its saves when they need more."""
        return max(self.total(), self.saving())

    def summary(self) -> str:
        w, h = self.size
        line = (f"memory: about {self.total(False) / GB:.1f} GB at batch {self.batch}, {w}x{h} px; with gradient "
                f"checkpointing about {self.total(True) / GB:.1f} GB")
        parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in self.parts().items())
        on = "on" if self.checkpointing else "off"
        saves = (f"; saves about {self.saving() / GB:.1f} GB (the weights at full precision while the exports are "
                 "written and checked)" if self.saving() > self.total() else "")
        return f"{line} (checkpointing {on}: {parts} GB){saves}"


def variants(estimate: MemoryEstimate) -> list[tuple[str, MemoryEstimate]]:
    """The switches that lower the memory, each on top of the ones before, in the order users reach for them."""
    out, e = [], estimate
    if not e.checkpointing:
        e = replace(e, checkpointing=True)
        out.append(("train.gradient_checkpointing: true", e))
    if e.mixed_precision == "no":
        e = replace(e, mixed_precision="bf16")
        out.append(("train.mixed_precision: bf16 (or fp16)", e))
    if e.optimizer == "adamw" and e.trained > 50_000_000:  # a few-MB LoRA gains nothing from 8-bit states
        e = replace(e, optimizer="adamw8bit")
        out.append(("train.optimizer: adamw8bit", e))
    if not e.full_bf16 and e.trained > 50_000_000:  # a whole model (DreamBooth): its weights and gradients in bf16
        e = replace(e, full_bf16=True, mixed_precision="bf16")
        out.append(("train.full_bf16: true (with mixed_precision: bf16)", e))
    if e.batch > 1:
        e = replace(e, activations=e.activations // e.batch, checkpointed=e.checkpointed // e.batch,
                    largest=e.largest // e.batch, batch=1)
        out.append(("train.batch_size: 1 (with gradient_accumulation for the same effective batch)", e))
    if e.reloads_model:  # a save then holds no second model (its exports are not loaded back to be checked)
        e = replace(e, reloads_model=False)
        out.append(("train.verify_exports: false", e))
    return out


def fitting_switch(estimate: MemoryEstimate, free: int) -> tuple[str, MemoryEstimate] | None:
    """None when the run fits (or may: within the estimate's uncertainty); else the fewest switches, named, that
    make it fit, with their estimate (the last of them all when none does)."""
    if estimate.peak() <= CLEARLY * free:
        return None
    steps = variants(estimate)
    names = []
    for name, e in steps:
        names.append(name)
        if e.peak() <= free:
            return " and ".join(names), e
    return (" and ".join(names), steps[-1][1]) if steps else ("a smaller train.resolution", estimate)


def free_memory(device: torch.device) -> int | None:
    """Bytes this process may still use on a CUDA `device`, counting what it holds already (the model is loaded
    by the time the estimate is made); None elsewhere (the CPU's memory is the operating system's to share)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_allocated(device)


def check_fits(estimate: MemoryEstimate, free: int, where: str = "the GPU") -> None:
    """A UserError when `free` bytes are clearly too few for `estimate`, naming what would fit."""
    found = fitting_switch(estimate, free)
    if found is None:
        return
    switches, fitted = found
    if fitted.peak() <= free:
        fix = f"Set {switches}: about {fitted.peak() / GB:.1f} GB."
    elif fitted.total() <= free:  # it would train, then stop at its first checkpoint
        fix = (f"With {switches} it trains in about {fitted.total() / GB:.1f} GB, but its saves need about "
               f"{fitted.saving() / GB:.1f} GB (every weight at full precision while the exports are written and "
               "checked), which none of the switches lowers enough: train on a GPU with more free memory.")
    else:
        fix = (f"Even with {switches} it needs about {fitted.peak() / GB:.1f} GB: lower train.resolution as well, "
               "or train on a GPU with more memory.")
    raise UserError(f"This run needs about {estimate.peak() / GB:.1f} GB ({estimate.summary()}), but {where} has "
                    f"{free / GB:.1f} GB free: it would stop with out-of-memory.", fix)


# ---------------------------------------------------------------- activations, counted on the meta device

class _FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention on the meta device, saving what the fused kernels save for backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, lse)  # and `out`, which the next projection saves as its input anyway
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the count needs only the forward pass
        raise NotImplementedError


def _fused_sdpa(query, key, value, *args, **kwargs):
    return _FusedAttention.apply(query, key, value)


@contextlib.contextmanager
def _meta_attention():
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _saved_tensors(module: torch.nn.Module, args: tuple, kwargs: dict, blocks: tuple[type, ...] = (),
                   block_inputs: dict[int, int] | None = None) -> list[tuple[int, int, int]]:
    """(bytes, storage id, enclosing block number or -1) of each distinct tensor autograd saves in
    `module(*args, **kwargs)`, parameters excluded, with every parameter, buffer and input a meta tensor of its
    shape (and requires_grad): nothing is computed or stored. `block_inputs` collects {id: bytes} of the tensors
    passed into the `blocks`."""
    from torch.func import functional_call

    params = {n: torch.empty_like(p, device="meta").requires_grad_(p.requires_grad)
              for n, p in module.named_parameters()}
    params |= {n: torch.empty_like(b, device="meta") for n, b in module.named_buffers()}
    skip = {id(p) for p in params.values()}
    args = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
    kwargs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    saved: list[tuple[torch.Tensor, int]] = []
    inside: list[int] = []  # the blocks running now, innermost last
    count = iter(range(10**9))
    kept: list[torch.Tensor] = []  # the block inputs, alive until the count ends so that their ids stay unique

    def enter(m, a, kw):
        inside.append(next(count))
        if block_inputs is not None and len(inside) == 1:
            for x in (*a, *kw.values()):
                if isinstance(x, torch.Tensor):
                    block_inputs[id(x)] = x.numel() * x.element_size()
                    kept.append(x)

    def leave(*_):
        inside.pop()

    handles = []
    for m in module.modules():
        if blocks and isinstance(m, blocks):
            handles.append(m.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(m.register_forward_hook(leave))

    def pack(t):
        saved.append((t, inside[0] if inside else -1))
        return t

    try:
        with _meta_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(module, params, args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    out, seen = [], set()
    for t, block in saved:
        base = t._base if t._base is not None else t
        if id(base) in skip or id(base) in seen:
            continue
        seen.add(id(base))
        out.append((base.numel() * base.element_size(), id(base), block))
    return out


def saved_bytes(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[int, int]:
    """(bytes autograd saves for backward in one forward of `module`, the largest saved tensor)."""
    sizes = [size for size, _, _ in _saved_tensors(module, args, kwargs)]
    return sum(sizes), max(sizes, default=0)


def unet_activation_bytes(unet, batch: int, size: tuple[int, int], context: int) -> tuple[int, int, int]:
    """(saved bytes without, and with gradient checkpointing, the largest saved tensor) of one UNet training
    forward at `batch` images of `size` pixels with `context` text tokens. diffusers checkpoints each resnet and
    transformer block: autograd then keeps what lies outside them plus their inputs, and backward recomputes one
    block at a time, whose tensors are held meanwhile: the largest block is added."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D

    w, h = size
    args = (torch.empty(batch, unet.config.in_channels, h // 8, w // 8, device="meta"),
            torch.zeros(batch, dtype=torch.long, device="meta"))
    kwargs = {"encoder_hidden_states": torch.empty(batch, context, unet.config.cross_attention_dim, device="meta")}
    was_checkpointing, was_training = unet.is_gradient_checkpointing, unet.training
    unet.train()
    try:
        unet.disable_gradient_checkpointing()
        inputs: dict[int, int] = {}
        saved = _saved_tensors(unet, args, kwargs, (ResnetBlock2D, BasicTransformerBlock), inputs)
    finally:
        if was_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train(was_training)
    per_block: dict[int, int] = {}
    for s, _, block in saved:
        per_block[block] = per_block.get(block, 0) + s
    outside = per_block.pop(-1, 0)
    kept_outside = {i for _, i, block in saved if block == -1}
    inputs_kept = sum(b for i, b in inputs.items() if i not in kept_outside)  # what each checkpoint holds
    full = sum(s for s, _, _ in saved)
    return full, outside + inputs_kept + max(per_block.values(), default=0), max((s for s, _, _ in saved), default=0)


class _LivePeak(TorchDispatchMode):
    """The most bytes the tensors made inside hold at once: each one counted from the operation that makes it until
    Python drops it (views share their base's memory and are not counted)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        given = {id(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}  # in place: nothing new
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view() and id(t) not in given:
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def inference_bytes(pipe, size: tuple[int, int]) -> int:
    """The most memory one image of `size` pixels takes beyond the weights: the larger of the UNet's forward with
    CFG (a batch of 2) and the VAE's decode, counted on the meta device (nothing computed or stored), attention as
    the fused kernels hold it."""
    from torch.func import functional_call

    w, h = size
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latents = torch.empty(1, pipe.vae.config.latent_channels, h // factor, w // factor, device="meta")
    context = torch.empty(2, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, device="meta")
    calls = [(pipe.unet, (latents.expand(2, -1, -1, -1).contiguous(), torch.zeros(2, dtype=torch.long, device="meta")),
              {"encoder_hidden_states": context}), (pipe.vae.decoder, (latents,), {})]
    peak = 0
    for module, args, kwargs in calls:
        params = {n: torch.empty_like(t, device="meta") for n, t in [*module.named_parameters(),
                                                                     *module.named_buffers()]}
        with torch.no_grad(), _meta_attention(), _LivePeak() as live:
            functional_call(module, params, args, kwargs)
        peak = max(peak, live.peak)
    return peak


def text_activation_bytes(text_encoder, batch: int, tokens: int) -> tuple[int, int]:
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    return saved_bytes(text_encoder, (ids,), {})


def estimate_training(pipe, trained: list[torch.Tensor], job: TrainJob, size: tuple[int, int],
                      text_encoder_trains: bool, passes: int = 1) -> MemoryEstimate:
    """The memory of `job` on `pipe` (the method set up: `trained` are its parameters) at images of `size`;
    `passes`: forward passes whose graphs are alive together (2 with prior preservation's class batch)."""
    t = job.train
    batch = t.batch_size * passes
    modules = [pipe.unet, pipe.vae, pipe.text_encoder]
    ids = {id(p) for p in trained}
    everything = {id(p): p.numel() for m in modules for p in m.parameters()} | {id(p): p.numel() for p in trained}
    n_trained = sum(p.numel() for p in trained)
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)  # validation images are drawn at the model's size
    tokens = pipe.tokenizer.model_max_length
    act, ckpt, largest = unet_activation_bytes(pipe.unet, batch, size, tokens)
    if text_encoder_trains:
        text, text_largest = text_activation_bytes(pipe.text_encoder, batch, tokens)
        act, ckpt, largest = act + text, ckpt + text, max(largest, text_largest)
    return MemoryEstimate(frozen=sum(n for i, n in everything.items() if i not in ids), trained=n_trained,
                          halvable=sum(p.numel() for p in halvable(pipe).values()),
                          kept_fp32=sum(p.numel() for p in trained if p is token_table(pipe)),
                          activations=act, checkpointed=ckpt, largest=largest, batch=batch, size=size,
                          optimizer=t.optimizer, ema=t.ema, mixed_precision=t.mixed_precision, full_bf16=t.full_bf16,
                          checkpointing=t.gradient_checkpointing,
                          reloads_model=t.verify_exports and job.method == "dreambooth",
                          inference=inference_bytes(pipe, (pipe.unet.config.sample_size * factor,) * 2))
