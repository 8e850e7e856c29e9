"""The speed and memory switches of a loaded pipeline (config/sampling.py RuntimeSettings), applied once.

    check_runtime(runtime, device)                # before the model loads: offload needs a GPU
    place_pipeline(pipe, runtime, device, dtype)  # attention, memory order, VAE, compile, then the device

Each switch is diffusers' or PyTorch's own primitive, named as A1111 users know it:

    attention sdpa / sliced / classic   AttnProcessor2_0 / SlicedAttnProcessor / AttnProcessor on UNet and VAE
    channels_last                       the UNet's weights in channels-last order (A1111 --opt-channelslast)
    compile                             nn.Module.compile on the UNet: lazy, compiled at its first call
    vae_slicing, vae_tiling             AutoencoderKL.enable_slicing / enable_tiling
    vae_upcast                          a half-precision decode that gives NaN is redone in fp32 (upcast_on_nan)
    medvram, lowvram                    enable_model_cpu_offload / enable_sequential_cpu_offload (accelerate hooks)

The switches live on the pipeline's modules, so every pipeline a session builds on them (txt2img,
img2img, ControlNet, hires fix) has them. A ControlNet gets the attention and memory order when it loads
(beside_unet), and under medvram / lowvram it waits in main memory as they do, and so does the hires fix's
upscaler (offload_beside). Without them, a ControlNet unit's own "Low VRAM" keeps its ControlNet in main
memory between its calls (unit_low_vram). A clip places its own pipeline: the motion UNet is built after the model
loads, so animate opens the session unplaced and places the motion pipeline (attention again where FreeNoise
rebuilds blocks).
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from personae.config.sampling import RuntimeSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore

HALF = (torch.float16, torch.bfloat16)


def check_runtime(runtime: RuntimeSettings, device: torch.device) -> None:
    """What cannot work on `device`, said before the model loads."""
    for name, what in (("medvram", "model CPU offload"), ("lowvram", "sequential CPU offload")):
        if getattr(runtime, name) and device.type != "cuda":
            raise UserError(f"--{name} ({what}) keeps the model in main memory and moves it to a GPU's memory as it "
                            f"runs; it needs a CUDA GPU, and this run is on the {device.type}, where the model is in "
                            "main memory already.", f"Leave out --{name} here (it saves GPU memory only).")


def attention_processor(name: str):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if name == "sliced":
        return None  # set per module by set_attention_slice: the slice size depends on the head count
    return {"sdpa": AttnProcessor2_0, "classic": AttnProcessor}[name]()


def set_attention(pipe, name: str) -> None:
    """The attention of the UNet and VAE: PyTorch's SDPA kernel, head slices, or the plain math."""
    set_unet_attention(pipe.unet, name)
    if name != "sliced":  # the VAE's one attention block keeps SDPA when the UNet's is sliced
        pipe.vae.set_attn_processor(attention_processor(name))


def set_unet_attention(unet, name: str) -> None:
    """`name`'s attention on every attention layer of `unet`: an image UNet or AnimateDiff's motion UNet (whose
    FreeNoise windows rebuild the motion modules' blocks with diffusers' default, so they are set again after)."""
    if name != "sliced":
        unet.set_attn_processor(attention_processor(name))
    elif hasattr(unet, "set_attention_slice"):
        unet.set_attention_slice("auto")
    else:  # UNetMotionModel has no set_attention_slice: each layer sliced as "auto" slices it, in half its heads
        from diffusers.models.attention_processor import Attention

        for module in unet.modules():
            if isinstance(module, Attention):
                module.set_attention_slice(max(1, module.sliceable_head_dim // 2))


def beside_unet(model, runtime: RuntimeSettings | None) -> None:
    """The switches that act on a model running beside the UNet at each step (a ControlNet): its attention and
    memory order, as the UNet's."""
    runtime = runtime or RuntimeSettings()
    set_unet_attention(model, runtime.attention)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)


def offload_beside(model, vae, runtime: RuntimeSettings | None, device: torch.device) -> bool:
    """--medvram / --lowvram for a model the pipeline's own offload does not cover (a ControlNet, which runs beside
    the UNet at each step; the hires fix's upscaler, between the passes): it waits in main memory as the pipeline's
    modules do. lowvram: streamed to `device` layer by layer as it runs (accelerate's cpu_offload, as
    enable_sequential_cpu_offload does to the UNet). medvram: moved whole to `device` at its first call
    (accelerate's cpu_offload_with_hook) and back before `vae` next runs, where a pass's memory peaks (diffusers'
    own ControlNet pipelines keep a ControlNet on the GPU until the call ends). Called for each use: a VAE whose
    hooks were installed again gets the release again. False when neither switch is on."""
    runtime = runtime or RuntimeSettings()
    if not (runtime.lowvram or runtime.medvram):
        return False
    if runtime.lowvram:
        if not hasattr(model, "_hf_hook"):
            from accelerate import cpu_offload

            cpu_offload(model, device, offload_buffers=len(model._parameters) > 0)
        return True
    from accelerate import cpu_offload_with_hook
    from accelerate.hooks import add_hook_to_module

    if not hasattr(model, "_hf_hook"):
        cpu_offload_with_hook(model, device)
    hook = getattr(vae, "_hf_hook", None)
    release = next((h for h in getattr(hook, "hooks", [hook]) if isinstance(h, _release_class())), None)
    if release is None:
        release = _release_class()()
        add_hook_to_module(vae, release, append=True)  # after the VAE's own offload hook
    if all(m is not model for m in release.models):
        release.models.append(model)
    return True


def unit_low_vram(model, on: bool, device: torch.device) -> None:
    """A ControlNet unit's "Low VRAM" (sd-webui-controlnet's per-unit checkbox, for when the session itself is not
    offloaded): `on`, the model waits in main memory and goes to `device` for each of its calls only, back after
    each, as the extension's hook moves it; off, that hook is taken away and the model stays on `device` (a session
    keeps its ControlNets between generations, which may ask otherwise)."""
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    per_call = _per_call_class()
    hooked = isinstance(getattr(model, "_hf_hook", None), per_call)
    if on and not hooked:
        add_hook_to_module(model, per_call(device))
    elif not on:
        if hooked:
            remove_hook_from_module(model)
        model.to(device)  # a no-op once there


@functools.cache
def _per_call_class():
    from accelerate.hooks import ModelHook

    class OnDeviceForEachCall(ModelHook):
        """The model on `execution_device` while it runs, in main memory between its calls."""

        def __init__(self, device: torch.device):
            self.execution_device = device

        def init_hook(self, module):
            return module.to("cpu")

        def pre_forward(self, module, *args, **kwargs):
            module.to(self.execution_device)
            return args, kwargs

        def post_forward(self, module, output):
            module.to("cpu")
            return output

    return OnDeviceForEachCall


@functools.cache
def _release_class():
    from accelerate.hooks import ModelHook

    class ReleaseBeforeDecode(ModelHook):
        """Before the VAE runs (diffusers' decode calls its hooks): `models` go back to main memory."""

        def __init__(self):
            self.models = []

        def pre_forward(self, module, *args, **kwargs):
            for model in self.models:
                model.to("cpu")
            return args, kwargs

    return ReleaseBeforeDecode


@contextlib.contextmanager
def rebuilt_while_streamed(blocks: list[tuple[torch.nn.ModuleList, int]]):
    """Around diffusers' rebuilding of the transformer blocks at `blocks` (a list and an index each: FreeNoise swaps
    a motion module's blocks for its own and back, copying each block's state dict into a new block made on the
    pipeline's device). Streamed by --lowvram, a block's weights wait on the meta device, in its hooks' maps, and
    the pipeline's device reads as meta: the copy would fail, or copy nothing. So each streamed block gets its
    weights back (in main memory, its hooks taken away) before, and after, the block in its place takes them and
    is streamed to the same device as the rest (accelerate's cpu_offload, as enable_sequential_cpu_offload does)."""
    from accelerate import cpu_offload

    streamed = [(where, _stream_device(where[0][where[1]])) for where in blocks]
    streamed = [(where, device) for where, device in streamed if device is not None]
    weights = [_unstreamed(where[0][where[1]]) for where, _ in streamed]
    with warnings.catch_warnings():
        if streamed:  # torch's word on the copy into a block made on the meta device, repaired below
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter in the checkpoint to a "
                                                      "meta parameter")
        yield
    for ((parent, i), device), state in zip(streamed, weights):
        if any(t.is_meta for t in parent[i].state_dict().values()):  # made on the meta device: nothing was copied
            parent[i].load_state_dict(state, assign=True)
        cpu_offload(parent[i], device)


def _streaming_hooks(module):
    """(layer, hook) for each of accelerate's offloading hooks on `module` and its layers (--lowvram's)."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    for part in module.modules():
        hook = getattr(part, "_hf_hook", None)
        for one in hook.hooks if isinstance(hook, SequentialHook) else [hook]:
            if isinstance(one, AlignDevicesHook) and one.offload:
                yield part, one


def _stream_device(module) -> torch.device | None:
    """Where --lowvram's hooks on `module` (or its layers) stream its weights to; None when none do."""
    devices = (hook.execution_device for _, hook in _streaming_hooks(module) if hook.execution_device is not None)
    device = next(devices, None)
    return None if device is None else torch.device(device)


def _unstreamed(module) -> dict[str, torch.Tensor]:
    """`module`'s streamed weights put back in main memory from its hooks' maps, the hooks taken away; its state."""
    from accelerate.hooks import remove_hook_from_module
    from accelerate.utils import named_module_tensors, set_module_tensor_to_device

    for part, hook in list(_streaming_hooks(module)):
        for name, _ in named_module_tensors(part, include_buffers=hook.offload_buffers, recurse=hook.place_submodules,
                                            remove_non_persistent=True):
            set_module_tensor_to_device(part, name, "cpu", value=hook.weights_map[name])
    remove_hook_from_module(module, recurse=True)
    return dict(module.state_dict())


def keep_unet_attention(unet, name: str) -> None:
    """`set_unet_attention` where a layer has another processor (blocks FreeNoise rebuilt), and nothing where each
    has its own already: a compiled UNet is not recompiled for new processors of the same kind."""
    from diffusers.models.attention_processor import SlicedAttnProcessor

    wanted = SlicedAttnProcessor if name == "sliced" else type(attention_processor(name))
    if any(type(p) is not wanted for p in unet.attn_processors.values()):
        set_unet_attention(unet, name)


def place_pipeline(pipe, runtime: RuntimeSettings | None, device: torch.device, dtype: torch.dtype,
                   on_event: EventHandler = ignore) -> None:
    """Apply `runtime`'s switches to `pipe` and put it on `device` (or, offloaded, leave it in main memory)."""
    runtime = runtime or RuntimeSettings()
    check_runtime(runtime, device)
    # 1. attention, memory order, VAE memory
    set_attention(pipe, runtime.attention)
    if runtime.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if runtime.vae_slicing:
        pipe.vae.enable_slicing()
    if runtime.vae_tiling:
        pipe.vae.enable_tiling()
    if runtime.vae_upcast and dtype in HALF:
        upcast_on_nan(pipe.vae, on_event)
    # 2. the device: offload hooks move parts to the GPU as they run, or everything goes there now
    if runtime.lowvram:
        pipe.enable_sequential_cpu_offload(device=device)
    elif runtime.medvram:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    # 3. compile last: it wraps the module's call as it is now (compiled lazily, at the first image)
    if runtime.compile:
        on_event(Message("--compile: the UNet compiles at the first image (minutes), later images run faster"))
        pipe.unet.compile()


def upcast_on_nan(vae, on_event: EventHandler = ignore) -> None:
    """Make `vae.decode` redo a half-precision decode in fp32 when it gives NaN from finite latents, and keep the
    VAE in fp32 from then on (the SD-1.x VAE overflows in fp16; A1111 reverts to fp32 the same way).

    Installed on the module itself, so every pipeline sharing this VAE decodes safely. The decode's result comes
    back in the latents' dtype, as the pipeline expects. nans.nan_guard lets the half-precision NaN through to
    this redo (`vae._personae_upcast`) and still stops one that fp32 gives too.
    """
    if getattr(vae, "_personae_upcast", False):
        return
    decode = vae.decode  # the bound method, with diffusers' offload-hook decorator

    @functools.wraps(decode)
    def safe_decode(z: torch.Tensor, *args, **kwargs):
        out = decode(z.to(vae.dtype), *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        if vae.dtype not in HALF or not bool(torch.isnan(sample).any()) or not bool(torch.isfinite(z).all()):
            return out
        on_event(Message(f"the VAE gave NaN in {str(vae.dtype).removeprefix('torch.')}: decoding again in fp32, "
                         "and keeping the VAE in fp32 (as A1111's --no-half-vae)", "warning"))
        vae.to(torch.float32)
        out = decode(z.to(torch.float32), *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0].to(z.dtype), *out[1:])
        out.sample = out.sample.to(z.dtype)
        return out

    vae.decode = safe_decode
    vae._personae_upcast = True
