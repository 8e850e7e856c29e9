"""The speed and memory switches reach AnimateDiff's motion pipeline (issue #21). Its motion UNet is built after the
model loads, so the switches are applied to the pipeline that runs (attention, memory order, compile, offload), and
the model is held once: the motion UNet's image layers are the loaded UNet's tensors, the adapter's weights are in
the motion UNet only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor
from offload_helpers import streamed_on_the_cpu

from personae.config.animate import AnimateSettings
from personae.inference import session as session_module
from personae.inference import speedups
from personae.inference.animate import animate, open_for

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(model, motion, **changes) -> AnimateSettings:
    return AnimateSettings(**{"model": str(model[0]), "motion_adapter": str(motion), "prompt": "a photo of a cat",
                              "steps": 2, "frames": 4, "width": 32, "height": 32, "seed": 1, "device": "cpu",
                              **changes})


def _processors(unet) -> set[type]:
    return {type(p) for p in unet.attn_processors.values()}


def _pixels(clip) -> np.ndarray:
    return np.stack([np.asarray(f, dtype=np.int16) for f in clip.frames])


def _storage_bytes(*modules) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (a tensor shared counts once)."""
    seen = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_attention_memory_order_and_compile_reach_the_motion_unet(tiny_model, motion_dir):
    for attention, kind in (("classic", AttnProcessor), ("sliced", SlicedAttnProcessor)):
        held = open_for(_settings(tiny_model, motion_dir, attention=attention, channels_last=True, compile=True))
        unet = held.pipe.unet
        assert type(unet).__name__ == "UNetMotionModel" and _processors(unet) == {kind}
        assert any(".motion_modules." in name for name in unet.attn_processors)  # the temporal layers too
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert unet._compiled_call_impl is not None
        # the loaded image UNet does not run in a clip: left as loaded
        image_unet = held.session.pipe.unet
        assert _processors(image_unet) == {AttnProcessor2_0} and image_unet._compiled_call_impl is None


def test_a_clip_in_windows_keeps_its_attention_and_draws_the_same(tiny_model, motion_dir):
    """FreeNoise rebuilds the motion modules' blocks with diffusers' default processor; the clip's attention is
    set on them again, and each attention draws the same clip."""
    from diffusers.models.attention import FreeNoiseTransformerBlock

    windowed = {"frames": 12, "context": 8, "context_stride": 4}
    plain = _pixels(animate(_settings(tiny_model, motion_dir, **windowed)))
    for attention, kind in (("classic", AttnProcessor), ("sliced", SlicedAttnProcessor)):
        settings = _settings(tiny_model, motion_dir, attention=attention, **windowed)
        held = open_for(settings)
        clip = _pixels(animate(settings, held))
        assert any(isinstance(m, FreeNoiseTransformerBlock) for m in held.pipe.unet.modules())
        assert _processors(held.pipe.unet) == {kind}
        assert np.abs(clip - plain).max() <= 2


def test_the_motion_pipeline_holds_each_weight_once(tiny_model, motion_dir):
    held = open_for(_settings(tiny_model, motion_dir))
    image, motion = held.session.pipe.unet.state_dict(), held.pipe.unet.state_dict()
    assert all(motion[key].data_ptr() == tensor.data_ptr() for key, tensor in image.items())
    assert not list(held.pipe.motion_adapter.parameters())  # its config only: the weights are in the motion UNet
    assert held.pipe.motion_adapter.config.motion_max_seq_length == held.context_limit == 32
    modules = [m for name, m in held.pipe.unet.named_modules() if name.endswith("motion_modules")]
    loaded = held.session.pipe
    assert _storage_bytes(loaded.unet, loaded.vae, loaded.text_encoder, held.pipe.unet, held.pipe.motion_adapter) == \
        _storage_bytes(loaded.unet, loaded.vae, loaded.text_encoder) + _storage_bytes(*modules)


def test_offload_on_the_cpu_says_it_needs_cuda(tiny_model, motion_dir, tmp_path, capsys):
    from personae.cli.main import main

    out = tmp_path / "clip.gif"
    assert main(["animate", "--model", str(tiny_model[0]), "--motion-adapter", str(motion_dir), "--prompt", "a cat",
                 "--device", "cpu", "--medvram", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--medvram" in err and "needs a CUDA GPU" in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("flag, hook", [("medvram", "CpuOffload"), ("lowvram", "AlignDevicesHook")])
def test_offload_puts_accelerates_hooks_on_the_motion_pipeline(monkeypatch, tiny_model, motion_dir, tmp_path, flag,
                                                               hook, recwarn):
    """What --medvram / --lowvram do on a GPU, with the CPU standing in for it (the device check set aside): the
    hooks are on the motion pipeline's modules, the loaded image UNet has none, and the clip (in windows, and from
    frames through a pipeline built per call) is the one drawn without offload. Under --lowvram FreeNoise's windows
    rebuild streamed blocks (they failed: "Cannot copy out of meta tensor"); the rebuilt blocks are streamed too,
    and torch's word on the copy diffusers makes into the meta device is not shown."""
    monkeypatch.setattr(speedups, "check_runtime", lambda runtime, device: None)
    monkeypatch.setattr(session_module, "check_runtime", lambda runtime, device: None)
    windowed = {"frames": 12, "context": 8, "context_stride": 4}
    settings = _settings(tiny_model, motion_dir, **{flag: True}, **windowed)
    held = open_for(settings)
    for module in (held.pipe.unet, held.pipe.text_encoder, held.pipe.vae):
        assert type(module._hf_hook).__name__ == hook
    assert not hasattr(held.session.pipe.unet, "_hf_hook")
    if flag == "lowvram":  # layer by layer: the weights wait on the meta device until their layer runs
        assert held.pipe.unet.conv_in.weight.device.type == "meta"
        streamed_on_the_cpu(held.pipe.unet, held.pipe.text_encoder, held.pipe.vae)
    plain = animate(_settings(tiny_model, motion_dir, **windowed))
    assert np.abs(_pixels(animate(settings, held)) - _pixels(plain)).max() <= 1
    for i, frame in enumerate(plain.frames):
        frame.save(tmp_path / f"f{i:02d}.png")
    from_frames = {"init_image": str(tmp_path), "strength": 0.5, "seed": 2, **windowed}
    want = _pixels(animate(_settings(tiny_model, motion_dir, **from_frames)))
    got = _pixels(animate(settings.model_copy(update=from_frames), held))
    assert np.abs(got - want).max() <= 1
    # a ControlNet unit (its own pipeline on the offloaded modules; the ControlNet offloaded too, sent back to main
    # memory when the clip's VAE decodes)
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path / "controlnet", base=tiny_model[0], seed=0)
    steered = {"controls": [{"model": str(net), "type": "raw", "image": str(tmp_path), "weight": 2.0}], **windowed}
    want = _pixels(animate(_settings(tiny_model, motion_dir, **steered)))
    got = _pixels(animate(AnimateSettings(**{**settings.model_dump(), **steered}), held))
    assert np.abs(got - want).max() <= 1 and np.abs(want - _pixels(plain)).mean() > 0.5
    model = held.session.controlnets[str(net)][1]
    assert type(model._hf_hook).__name__ == hook
    if flag == "medvram":  # moved whole for the clip, and sent back before the decode
        assert [h.models for h in held.pipe.vae._hf_hook.hooks
                if type(h).__name__ == "ReleaseBeforeDecode"] == [[model]]
    else:  # the motion modules' blocks, rebuilt for the windows and back, streamed as the rest
        blocks = [b for block in [*held.pipe.unet.down_blocks, *held.pipe.unet.up_blocks]
                  for m in getattr(block, "motion_modules", []) for b in m.transformer_blocks]
        assert blocks and all(b.norm1.weight.is_meta and type(b.norm1._hf_hook).__name__ == hook for b in blocks)
    assert not [w for w in recwarn if "meta parameter" in str(w.message)]


def test_a_shared_motion_unet_is_built_without_copies_and_computes_what_a_copied_one_does(tiny_model, motion_dir):
    """Built empty (on the meta device) and given the UNet's and the adapter's own tensors: nothing is allocated
    twice, even while it is built, and it is the motion UNet diffusers' copies make."""
    from personae.inference.animate import motion_unet
    from personae.inference.session import open_session
    from personae.models.motion import load_motion_adapter, resolve_motion_adapter

    unet = open_session(str(tiny_model[0]), "cpu").pipe.unet
    adapter = load_motion_adapter(resolve_motion_adapter(str(motion_dir)))
    copied, shared = motion_unet(unet, adapter), motion_unet(unet, adapter, share=True)
    ours, image, motion = shared.state_dict(), unet.state_dict(), adapter.state_dict()
    assert all(ours[key].data_ptr() == t.data_ptr() for key, t in image.items())
    assert all(ours[key].data_ptr() == t.data_ptr() for key, t in motion.items() if ".motion_modules." in key)
    assert not any(t.is_meta for t in [*shared.parameters(), *shared.buffers()])
    assert all(copied.state_dict()[key].data_ptr() != t.data_ptr() for key, t in image.items())
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 4, 8, 8, generator=generator)
    text = torch.randn(4, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        assert torch.equal(copied(sample, 500, text).sample, shared(sample, 500, text).sample)


def test_a_controlnet_gets_the_sessions_attention_and_memory_order(tiny_model, motion_dir, tmp_path):
    """A ControlNet runs beside the UNet at every step, in generate and in a clip: the session's switches reach it."""
    from personae.config.sampling import RuntimeSettings
    from personae.inference.controlnet import controlnet_for
    from personae.inference.session import open_session
    from personae.models.controlnet import write_tiny_controlnet

    folder = write_tiny_controlnet(tmp_path / "controlnet", base=tiny_model[0], seed=0)
    for attention, kind in (("classic", AttnProcessor), ("sliced", SlicedAttnProcessor)):
        session = open_session(str(tiny_model[0]), "cpu",
                               runtime=RuntimeSettings(attention=attention, channels_last=True))
        model = controlnet_for(session, str(folder))
        assert _processors(model) == {kind} and model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    held = open_for(_settings(tiny_model, motion_dir, attention="classic"))  # a clip's session: the clip's switches
    assert _processors(controlnet_for(held.session, str(folder))) == {AttnProcessor}


def test_ddim_on_the_zero_snr_schedule_draws_finite_frames_as_a1111(tiny_model, motion_dir):
    """AnimateDiff's DDIM starts at the last training step, where diffusers' rescaled schedule has alphabar 0 and
    an epsilon model's x0 divides by zero: the clip was NaN, saved as black frames. A1111 ends that schedule at
    4.8973451890853435e-08; so does personae now, and a v-prediction model keeps diffusers' exact 0."""
    import warnings

    from personae.inference.animate import MOTION_SCHEDULE
    from personae.inference.samplers import get_sampler
    from personae.inference.session import open_session

    config = {**open_session(str(tiny_model[0]), "cpu").base_scheduler, **MOTION_SCHEDULE}
    for prediction, last in (("epsilon", 4.8973451890853435e-08), ("v_prediction", 0.0)):
        made = get_sampler("DDIM").make({**config, "prediction_type": prediction}, {"zero_terminal_snr": True})
        assert float(made.alphas_cumprod[-1]) == pytest.approx(last, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value encountered in cast": NaN pixels
        clip = animate(_settings(tiny_model, motion_dir, sampler="DDIM", noise_schedule="Zero Terminal SNR"))
    assert "Noise Schedule: Zero Terminal SNR" in clip.parameters


def test_a_clip_with_nans_stops_and_names_the_lora(tiny_model, motion_dir, tmp_path, capsys):
    """A1111's NansException for clips too: a LoRA with NaN weights stops the clip, nothing is written."""
    from test_nans import _nan_lora

    from personae.cli.main import main
    from personae.inference.session import open_session

    _nan_lora(open_session(str(tiny_model[0]), "cpu").pipe, tmp_path / "burnt.safetensors")
    out = tmp_path / "clip.gif"
    assert main(["animate", "--model", str(tiny_model[0]), "--motion-adapter", str(motion_dir), "--prompt", "a cat",
                 "--frames", "4", "--steps", "2", "--width", "32", "--height", "32", "--device", "cpu",
                 "--lora", f"{tmp_path / 'burnt.safetensors'}:0.8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "UNet produced NaNs" in err and "burnt" in err and "Traceback" not in err and not out.exists()
