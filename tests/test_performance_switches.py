"""The speed and memory switches for real GPUs (issue #21), each shown to reach the real diffusers object on the
tiny model, or to say clearly that it needs CUDA."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor
from offload_helpers import streamed_on_the_cpu
from PIL import Image

from personae.config.generate import GenerateSettings
from personae.config.sampling import RuntimeSettings
from personae.errors import UserError
from personae.inference import speedups
from personae.inference.nans import NansError
from personae.inference.session import open_session
from personae.inference.speedups import place_pipeline, upcast_on_nan
from personae.inference.txt2img import txt2img
from personae.models.tiny import build_tiny_pipeline
from personae.training.memory import GB, MemoryEstimate, check_fits, fitting_switch, saved_bytes, unet_activation_bytes


def _processors(module) -> set[type]:
    return {type(p) for p in module.attn_processors.values()}


def test_a_streamed_cpu_weight_stays_a_parameter_only_by_the_plain_device_name():
    """Why tests/offload_helpers.py renames the device: the torch behaviour it works around."""
    weight = torch.nn.Parameter(torch.zeros(2))
    assert type(weight.to("cpu:0")) is torch.Tensor and weight.to("cpu") is weight


def _settings(model, **changes) -> GenerateSettings:
    return GenerateSettings(**{"model": str(model), "prompt": "a red square", "steps": 2, "seed": 3, "device": "cpu",
                               **changes})


@pytest.mark.parametrize("attention, expected", [("sdpa", AttnProcessor2_0), ("sliced", SlicedAttnProcessor),
                                                  ("classic", AttnProcessor)])
def test_attention_choice_sets_the_unets_processors(tiny_model, attention, expected):
    session = open_session(str(tiny_model[0]), "cpu", runtime=RuntimeSettings(attention=attention))
    assert _processors(session.pipe.unet) == {expected}
    assert _processors(session.pipe.vae) <= {AttnProcessor2_0, AttnProcessor}


def test_sdpa_is_the_default_and_the_choices_draw_the_same_picture(tiny_model):
    assert RuntimeSettings().attention == "sdpa"
    images = {a: np.asarray(txt2img(_settings(tiny_model[0], attention=a))[0].image, dtype=np.int16)
              for a in ("sdpa", "sliced", "classic")}
    for a in ("sliced", "classic"):
        assert np.abs(images[a] - images["sdpa"]).max() <= 1, a  # the same maths, rounded in another order


def test_channels_last_vae_slicing_tiling_and_compile_reach_the_modules(tiny_model):
    plain = open_session(str(tiny_model[0]), "cpu").pipe
    assert not plain.vae.use_slicing and not plain.vae.use_tiling and plain.unet._compiled_call_impl is None
    assert not plain.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    runtime = RuntimeSettings(channels_last=True, vae_slicing=True, vae_tiling=True, compile=True)
    pipe = open_session(str(tiny_model[0]), "cpu", runtime=runtime).pipe
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.unet.down_blocks[0].resnets[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    # compiled lazily: nn.Module.compile wraps the call; nothing compiles until the first image (minutes on a CPU)
    assert pipe.unet._compiled_call_impl is not None and type(pipe.unet).__name__ == "UNet2DConditionModel"


def test_vae_slicing_decodes_the_same_batch(tiny_model):
    plain = txt2img(_settings(tiny_model[0], batch_size=2))
    sliced = txt2img(_settings(tiny_model[0], batch_size=2, vae_slicing=True))
    for a, b in zip(plain, sliced):
        assert np.abs(np.asarray(a.image, dtype=np.int16) - np.asarray(b.image, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("flag", ["medvram", "lowvram"])
def test_offload_on_the_cpu_says_it_needs_cuda(tiny_model, flag):
    with pytest.raises(UserError, match=f"--{flag}.*needs a CUDA GPU") as err:
        open_session(str(tiny_model[0]), "cpu", runtime=RuntimeSettings(**{flag: True}))
    assert "Leave out" in str(err.value)
    with pytest.raises(ValueError, match="choose one"):
        RuntimeSettings(medvram=True, lowvram=True)


@pytest.mark.parametrize("flag, hook", [("medvram", "CpuOffload"), ("lowvram", "AlignDevicesHook")])
def test_offload_installs_accelerates_hooks_on_the_pipeline(monkeypatch, flag, hook):
    """What --medvram / --lowvram do on a GPU, run with the CPU as the "GPU" (the device check set aside): the
    accelerate hooks are on the real modules and the picture is the one without offload."""
    monkeypatch.setattr(speedups, "check_runtime", lambda runtime, device: None)
    plain, offloaded = build_tiny_pipeline(), build_tiny_pipeline()
    place_pipeline(offloaded, RuntimeSettings(**{flag: True}), torch.device("cpu"), torch.float32)
    assert type(offloaded.unet._hf_hook).__name__ == hook
    if flag == "lowvram":  # layer by layer: the hooks sit on the leaf modules, whose weights wait on the meta device
        assert hasattr(offloaded.unet.conv_in, "_hf_hook") and offloaded.unet.conv_in.weight.device.type == "meta"
        streamed_on_the_cpu(offloaded.unet, offloaded.vae, offloaded.text_encoder)
    call = dict(prompt="a red square", num_inference_steps=2, height=64, width=64, output_type="np")
    a = plain(**call, generator=torch.Generator().manual_seed(0)).images
    b = offloaded(**call, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("flag, hook", [("medvram", "CpuOffload"), ("lowvram", "AlignDevicesHook")])
def test_an_offloaded_session_draws_through_personaes_own_steps(monkeypatch, tiny_model, photo, tmp_path, flag, hook):
    """personae's prompt encoder (weights, clip skip, prompt editing, AND) and per-call pipelines (txt2img with the
    hires fix, img2img, inpainting of the masked area only) run on an offloaded session, the CPU standing in for the
    GPU, and draw the pictures the plain session draws."""
    from personae.inference import session as session_module

    monkeypatch.setattr(speedups, "check_runtime", lambda runtime, device: None)
    monkeypatch.setattr(session_module, "check_runtime", lambda runtime, device: None)
    offloaded = open_session(str(tiny_model[0]), "cpu", runtime=RuntimeSettings(**{flag: True}))
    assert type(offloaded.pipe.unet._hf_hook).__name__ == hook
    if flag == "lowvram":
        streamed_on_the_cpu(offloaded.pipe.unet, offloaded.pipe.vae, offloaded.pipe.text_encoder)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 40, 40))
    mask.save(tmp_path / "mask.png")
    for changes in ({"prompt": "a (red:1.3) square", "clip_skip": 2}, {"prompt": "a [red:blue:0.5] square",
                                                                        "hires_scale": 1.5, "hires_denoise": 0.5},
                    {"prompt": "a red square :1.2 AND a blue circle :0.5"},
                    {"init_image": str(photo), "strength": 0.6, "width": 64, "height": 64},
                    {"init_image": str(photo), "mask": str(tmp_path / "mask.png"), "inpaint_area": "masked",
                     "strength": 0.8, "width": 64, "height": 64}):
        settings = _settings(tiny_model[0], **changes)
        a = np.asarray(txt2img(settings)[0].image, dtype=np.int16)
        b = np.asarray(txt2img(settings, offloaded)[0].image, dtype=np.int16)
        assert np.abs(a - b).max() <= 1, changes


@pytest.mark.parametrize("flag, hook", [("medvram", "CpuOffload"), ("lowvram", "AlignDevicesHook")])
def test_offload_reaches_a_controlnet(monkeypatch, tiny_model, photo, tmp_path, flag, hook):
    """Under --medvram / --lowvram a ControlNet waits in main memory as the session's modules do (before: it went
    whole to the GPU at load and stayed there, beside the VAE's decode): lowvram streams it layer by layer; medvram
    moves it whole for a pass, and the VAE's hook sends it back before the decode. The CPU stands in for the GPU."""
    from personae.inference import session as session_module
    from personae.inference.controlnet import controlnet_for
    from personae.models.controlnet import write_tiny_controlnet

    monkeypatch.setattr(speedups, "check_runtime", lambda runtime, device: None)
    monkeypatch.setattr(session_module, "check_runtime", lambda runtime, device: None)
    net = str(write_tiny_controlnet(tmp_path / "controlnet", base=tiny_model[0], seed=0))
    session = open_session(str(tiny_model[0]), "cpu", runtime=RuntimeSettings(**{flag: True}))
    model = controlnet_for(session, net)
    assert type(model._hf_hook).__name__ == hook
    if flag == "lowvram":  # layer by layer: its weights wait on the meta device until their layer runs
        assert model.conv_in.weight.device.type == "meta"
        streamed_on_the_cpu(session.pipe.unet, session.pipe.vae, session.pipe.text_encoder, model)
        unit = {"type": "raw", "image": str(photo), "model": net, "weight": 2.0, "low_vram": True}
        got = np.asarray(txt2img(_settings(tiny_model[0], controls=[unit]), session)[0].image, dtype=np.int16)
        want = np.asarray(txt2img(_settings(tiny_model[0], controls=[unit]))[0].image, dtype=np.int16)
        assert np.abs(got - want).max() <= 1 and type(model._hf_hook).__name__ == hook
        return
    release = [h for h in session.pipe.vae._hf_hook.hooks if type(h).__name__ == "ReleaseBeforeDecode"]
    assert len(release) == 1 and release[0].models == [model]
    events = []
    model.register_forward_pre_hook(lambda *_: events.append("controlnet"))
    session.pipe.vae.decoder.register_forward_pre_hook(lambda *_: events.append("decode"))
    released = release[0].pre_forward
    monkeypatch.setattr(release[0], "pre_forward", lambda *a, **k: events.append("release") or released(*a, **k))
    # a unit's own "Low VRAM" adds nothing to the session's offload: the ControlNet keeps the offload's hook
    unit = {"type": "raw", "image": str(photo), "model": net, "weight": 2.0, "low_vram": True}
    settings = _settings(tiny_model[0], controls=[unit])
    got = np.asarray(txt2img(settings, session)[0].image, dtype=np.int16)
    assert events == ["controlnet"] * 2 + ["release", "decode"]  # a call per step (the CFG rows in one batch)
    assert type(model._hf_hook).__name__ == hook
    want = np.asarray(txt2img(settings)[0].image, dtype=np.int16)
    plain = np.asarray(txt2img(_settings(tiny_model[0]))[0].image, dtype=np.int16)
    assert np.abs(got - want).max() <= 1 and np.abs(want - plain).mean() > 0.5
    # diffusers installs the offload hooks again (a pipeline's call ends so): the next use releases it again
    session.pipe.enable_model_cpu_offload(device="cpu")
    assert not any(type(h).__name__ == "ReleaseBeforeDecode" for h in getattr(session.pipe.vae._hf_hook, "hooks", []))
    assert controlnet_for(session, net) is model
    assert [h.models for h in session.pipe.vae._hf_hook.hooks if type(h).__name__ == "ReleaseBeforeDecode"] == [[model]]


@pytest.mark.parametrize("flag, hook", [("medvram", "CpuOffload"), ("lowvram", "AlignDevicesHook")])
def test_offload_reaches_the_hires_upscaler(monkeypatch, tiny_model, tmp_path, flag, hook):
    """The hires fix's upscaler network (an ESRGAN file) waits in main memory under --medvram / --lowvram too
    (before: it went whole to the GPU and stayed): medvram moves it for the upscale and the VAE's encode of the
    upscaled picture sends it back; the picture is the one without offload. The CPU stands in for the GPU."""
    from safetensors.torch import save_file

    from personae.inference import hires_passes
    from personae.inference import session as session_module
    from personae.models.upscalers import CompactNet, read_upscaler

    monkeypatch.setattr(speedups, "check_runtime", lambda runtime, device: None)
    monkeypatch.setattr(session_module, "check_runtime", lambda runtime, device: None)
    path = tmp_path / "2x-Tiny.safetensors"
    torch.manual_seed(0)
    save_file({k: torch.randn_like(v) * 0.1 for k, v in CompactNet(3, 3, 8, 2, 2).state_dict().items()}, str(path))
    session = open_session(str(tiny_model[0]), "cpu", runtime=RuntimeSettings(**{flag: True}))
    if flag == "lowvram":  # layer by layer: its tiles go in on the CPU and its hooks move them (and its layers)
        from personae.models.upscalers import upscale_once

        streamed = read_upscaler(path, False)
        assert speedups.offload_beside(streamed.net, session.pipe.vae, session.runtime, session.device)
        assert type(streamed.net._hf_hook).__name__ == hook and next(streamed.net.parameters()).is_meta
        picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
        want = upscale_once(read_upscaler(path, False), picture, tile=16, overlap=4)
        assert np.array_equal(np.asarray(upscale_once(streamed, picture, tile=16, overlap=4)), np.asarray(want))
        # the whole hires fix through the streamed session and its own streamed upscaler
        streamed_on_the_cpu(session.pipe.unet, session.pipe.vae, session.pipe.text_encoder)
        settings = _settings(tiny_model[0], hires_scale=1.5, hires_denoise=0.5, hires_steps=2,
                             hires_upscaler=str(path))
        got = np.asarray(txt2img(settings, session)[0].image, dtype=np.int16)
        want = np.asarray(txt2img(settings)[0].image, dtype=np.int16)
        assert got.shape == (96, 96, 3) and np.abs(got - want).max() <= 1
        return
    offloaded = []
    monkeypatch.setattr(hires_passes, "offload_beside",
                        lambda net, *a: offloaded.append(net) or speedups.offload_beside(net, *a))
    settings = _settings(tiny_model[0], hires_scale=1.5, hires_denoise=0.5, hires_steps=2, hires_upscaler=str(path))
    got = np.asarray(txt2img(settings, session)[0].image, dtype=np.int16)
    [net] = offloaded
    assert type(net._hf_hook).__name__ == hook
    assert [h.models for h in session.pipe.vae._hf_hook.hooks if type(h).__name__ == "ReleaseBeforeDecode"] == [[net]]
    want = np.asarray(txt2img(settings)[0].image, dtype=np.int16)
    assert got.shape == (96, 96, 3) and np.abs(got - want).max() <= 1


def test_fp16_on_the_cpu_is_refused_and_bf16_runs(tiny_model):
    with pytest.raises(UserError, match="fp16.*CPU"):
        open_session(str(tiny_model[0]), "cpu", "fp16")
    image = txt2img(_settings(tiny_model[0], dtype="bf16"))[0].image
    assert np.asarray(image).std() > 0


def _nan_in_half(module, inputs, output):
    """What the SD-1.x VAE does in fp16 on real pictures (it overflows), made to happen on the tiny one."""
    if output.dtype in (torch.float16, torch.bfloat16):
        return torch.full_like(output, float("nan"))
    return None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_decode_that_gives_nan_is_redone_in_fp32(dtype):
    vae = build_tiny_pipeline().vae.to(dtype)
    reference = copy.deepcopy(vae).to(torch.float32)  # the same (rounded) weights, decoded in fp32
    vae.decoder.register_forward_hook(_nan_in_half)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.no_grad():
        assert torch.isnan(vae.decode(z).sample).all()  # without the switch: NaN
        upcast_on_nan(vae)
        out = vae.decode(z).sample
        expected = reference.decode(z.float()).sample
    assert torch.isfinite(out).all() and out.dtype == dtype
    assert torch.equal(out, expected.to(dtype))
    assert vae.dtype == torch.float32  # kept in fp32 from then on, as A1111 does
    with torch.no_grad():
        again = vae.decode(z, return_dict=False)[0]
    assert torch.equal(again, expected)


def test_generation_in_bf16_survives_a_nan_decode_and_fp32_nan_still_stops(tiny_model):
    session = open_session(str(tiny_model[0]), "cpu", "bf16")
    handle = session.pipe.vae.decoder.register_forward_hook(_nan_in_half)
    image = txt2img(_settings(tiny_model[0], dtype="bf16"), session)[0].image
    handle.remove()
    assert session.pipe.vae.dtype == torch.float32 and np.asarray(image).std() > 0
    # a VAE that gives NaN in fp32 too is still stopped with A1111's message, not written as a black picture
    session.pipe.vae.decoder.register_forward_hook(lambda m, i, o: torch.full_like(o, float("nan")))
    with pytest.raises(NansError, match="VAE produced NaNs"):
        txt2img(_settings(tiny_model[0], dtype="bf16"), session)


def test_without_vae_upcast_the_nan_is_reported(tiny_model):
    session = open_session(str(tiny_model[0]), "cpu", "bf16", runtime=RuntimeSettings(vae_upcast=False))
    session.pipe.vae.decoder.register_forward_hook(_nan_in_half)
    with pytest.raises(NansError, match="VAE produced NaNs"):
        txt2img(_settings(tiny_model[0], dtype="bf16", vae_upcast=False), session)
    assert session.pipe.vae.dtype == torch.bfloat16


# ---------------------------------------------------------------- training: memory estimate, text-encoder cache

SD15 = dict(frozen=1_066_235_307, batch=1, size=(512, 512), largest=int(0.04 * GB))  # UNet + text encoder + VAE


def test_memory_decision_names_the_switch_that_fits():
    lora = MemoryEstimate(trained=797_184, activations=int(6.3 * GB), checkpointed=int(1.6 * GB), **SD15)
    assert 4.9 * GB < lora.total() < 11.5 * GB and lora.total(True) < lora.total(False)
    assert fitting_switch(lora, 24 * GB) is None  # fits
    assert fitting_switch(lora, int(lora.total() / 1.2)) is None  # within the estimate's uncertainty: not refused
    with pytest.raises(UserError, match="gradient_checkpointing: true: about") as err:
        check_fits(lora, 7 * GB)
    assert "7.0 GB free" in str(err.value) and "out-of-memory" in str(err.value)
    # full-UNet DreamBooth on 12 GB: weights + gradients + AdamW states are 16 GB before any activation
    dreambooth = MemoryEstimate(trained=859_520_964, activations=int(6.3 * GB), checkpointed=int(1.6 * GB),
                                **{**SD15, "frozen": SD15["frozen"] - 859_520_964})
    switches, fitted = fitting_switch(dreambooth, 12 * GB)
    assert "adamw8bit" in switches and "gradient_checkpointing" in switches and fitted.total() <= 12 * GB
    with pytest.raises(UserError, match="Even with .* lower train.resolution"):
        check_fits(dreambooth, 4 * GB)


def _real_saved_bytes(module, args, kwargs) -> int:
    """What autograd saves in one real forward (CPU, real weights), counted the same way."""
    params = {id(p) for p in module.parameters()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        module(*args, **kwargs)
    seen, total = set(), 0
    for t in saved:
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            total += base.numel() * base.element_size()
    return total


def test_activation_count_on_the_meta_device_is_what_autograd_saves():
    from peft import LoraConfig

    pipe = build_tiny_pipeline()
    unet = pipe.unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.train()
    args = (torch.randn(2, 4, 16, 16), torch.tensor([10, 500]))
    kwargs = {"encoder_hidden_states": torch.randn(2, 77, 32)}
    real = _real_saved_bytes(unet, args, kwargs)
    counted, _ = saved_bytes(unet, args, kwargs)
    assert abs(counted - real) <= 0.02 * real, (counted, real)
    full, checkpointed, largest = unet_activation_bytes(unet, 2, (128, 128), 77)
    assert full == counted and 0 < largest < checkpointed < full
    assert unet_activation_bytes(unet, 4, (128, 128), 77)[0] == pytest.approx(2 * full, rel=0.05)  # linear in batch
    assert not unet.is_gradient_checkpointing and all(p.device.type == "cpu" for p in unet.parameters())


def test_training_prints_the_estimate_records_it_and_caches_captions(tmp_path, tiny_model, monkeypatch):
    from train_helpers import prepared_subject, write_job

    from personae.jobs.train import load_job, run_training
    from personae.runs import read_run
    from personae.training import loop

    prepared = prepared_subject(tmp_path / "data", count=2, trigger="sks")
    encoded = []

    def counting(pipe, text_encoder, captions, *options):
        encoded.append(len(captions))
        return encode(pipe, text_encoder, captions, *options)

    encode = loop.encode_text
    monkeypatch.setattr(loop, "encode_text", counting)
    results = {}
    for cache in (True, False):
        encoded.clear()
        messages = []
        job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared,
                                 output=tmp_path / f"run-{cache}", lora={"rank": 4, "alpha": 4},
                                 train={"steps": 3, "batch_size": 2, "verify_exports": False,
                                        "validation": {"steps": 1}, "cache_text_encoder_outputs": cache}))
        run_training(job, on_event=lambda e: messages.append(str(getattr(e, "text", ""))))
        results[cache] = (list(encoded), messages, read_run(job.output))
    cached, uncached = results[True][0], results[False][0]
    assert uncached == [2, 2, 2]  # a batch of 2 captions encoded at each of the 3 steps
    assert cached == [1] * len(cached) and 1 <= len(cached) <= 2  # each distinct caption once
    line = next(m for m in results[True][1] if m.startswith("memory: about"))
    assert "at batch 2, 64x64 px; with gradient checkpointing about" in line
    assert results[True][2].metrics.memory_estimate_gb > 0
