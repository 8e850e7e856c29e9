"""FreeInit for clips (`personae animate --freeinit`), as A1111's AnimateDiff extension runs it.

The filters and the frequency mix against diffusers' FreeInitMixin (and the extension's box filter by its formula);
on the tiny model and tiny motion adapter: the second pass starts from the first pass's result diffused to the last
training step, its low frequencies kept and its high ones the first noise's, for a clip from text, from frames and
with a ControlNet unit whose guidance window counts each pass's steps anew.
"""

import numpy as np
import pytest
import torch

from personae.config.animate import AnimateSettings
from personae.config.base import parse_settings
from personae.errors import UserError
from personae.events import Progress
from personae.inference.animate import animate, open_for
from personae.inference.freeinit import FILTERS, frequency_mix, last_alphabar, low_pass_filter, reinitialize
from personae.media.png import parse_parameters

# models: the full tier only; one thread (conftest.one_thread)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



def settings(model, motion, **kw):
    return AnimateSettings(**{"model": str(model), "motion_adapter": str(motion), "prompt": "a photo of a cat",
                              "steps": 3, "seed": 7, "width": 32, "height": 32, "frames": 6, "context": 6,
                              "context_stride": 2, **kw})


@pytest.fixture(scope="module")
def held(tiny_model, motion_dir):
    return open_for(settings(tiny_model[0], motion_dir))


def pixels(clip):
    return np.stack([np.asarray(f, dtype=np.int16) for f in clip.frames])


@pytest.mark.parametrize("method", ["butterworth", "gaussian", "ideal"])
@pytest.mark.parametrize("d_s, d_t", [(0.25, 0.25), (0.4, 0.1), (0.0, 0.25)])
def test_the_filters_and_the_mix_are_diffusers_freeinits(method, d_s, d_t):
    from diffusers.pipelines.free_init_utils import FreeInitMixin

    reference = FreeInitMixin()._get_free_init_freq_filter((1, 4, 6, 5, 8), "cpu", method, 4, d_s, d_t)
    mask = low_pass_filter(6, 5, 8, method, d_s, d_t)
    assert torch.allclose(mask.expand(1, 4, 6, 5, 8), reference, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    low, high = torch.randn(1, 4, 6, 5, 8, generator=g), torch.randn(1, 4, 6, 5, 8, generator=g)
    assert torch.allclose(frequency_mix(low, high, mask), FreeInitMixin()._apply_freq_filter(low, high, reference),
                          atol=1e-5)


def test_the_box_filter_is_the_extensions():
    mask = low_pass_filter(8, 8, 12, "box", 0.5, 0.5)
    box = torch.zeros(8, 8, 12)
    box[2:6, 2:6, 4:8] = 1  # round(4 x 0.5) = 2 frames and rows either side of the centre (4, 4, 6)
    assert torch.equal(mask, box)
    with pytest.raises(ValueError):
        low_pass_filter(2, 2, 2, "sharp")
    assert FILTERS == ("butterworth", "gaussian", "ideal", "box")


def first_unet_inputs(held, run):
    """The latents the motion UNet gets at the first call of every pass (its first row), while `run()` draws."""
    seen = []
    unet = held.pipe.unet

    def grab(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen.append(sample[:1].detach().clone())
    handle = unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        clip = run()
    finally:
        handle.remove()
    return clip, seen


def decoded_latents(held, run):
    """The latents the VAE decodes (x scaling factor: the sampler's last latents), as (1, channels, frames, h, w)."""
    vae, got = held.pipe.vae, []

    def grab(module, args):
        got.append(args[0].detach().clone())
    handle = vae.post_quant_conv.register_forward_pre_hook(grab)
    try:
        clip = run()
    finally:
        handle.remove()
    z = torch.cat(got) * vae.config.scaling_factor  # (frames, c, h, w)
    return clip, z.permute(1, 0, 2, 3)[None]


def test_the_second_pass_starts_from_the_first_ones_low_frequencies(tiny_model, motion_dir, held):
    """DDIM (its first sigma is 1): pass 1 is the plain clip; pass 2's noise is the plain clip's latents diffused to
    step 999 with pass 1's noise, low-passed in 3-D, the rest pass 1's noise."""
    plain_settings = settings(tiny_model[0], motion_dir, sampler="DDIM")
    plain, x0 = decoded_latents(held, lambda: animate(plain_settings, held))
    free_settings = settings(tiny_model[0], motion_dir, sampler="DDIM", freeinit=True, freeinit_iters=2,
                             freeinit_ds=0.4, freeinit_dt=0.3)
    free, inputs = first_unet_inputs(held, lambda: animate(free_settings, held))
    steps = 3
    noise, second = inputs[0], inputs[steps]
    mask = low_pass_filter(*x0.shape[-3:], "butterworth", 0.4, 0.3)
    # the clip's schedule: AnimateDiff's linear betas
    alphabar = torch.prod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64)).item()
    from diffusers import DDIMScheduler

    assert last_alphabar(DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")) == pytest.approx(
        alphabar, rel=1e-4)
    expected = reinitialize(x0, noise, alphabar, mask)
    assert torch.allclose(second, expected, atol=1e-5)
    assert len(inputs) == 2 * steps
    assert not np.array_equal(pixels(free), pixels(plain))
    _, _, params = parse_parameters(free.parameters)
    assert (params["FreeInit"], params["FreeInit iterations"], params["FreeInit filter"], params["FreeInit d_s"],
            params["FreeInit d_t"]) == ("True", "2", "butterworth", "0.4", "0.3")
    assert "FreeInit" not in parse_parameters(plain.parameters)[2]


@pytest.mark.parametrize("sampler", ["DDIM", "Euler", "DPM++ 2M Karras"])
def test_with_no_low_frequencies_kept_every_pass_is_the_first(tiny_model, motion_dir, held, sampler):
    """d_s 0: the filter keeps nothing, so each pass starts from the first pass's own noise again, as the sampler
    scales it, and the clip is the plain one; any other d_s draws another clip. Progress counts every pass. (An
    ancestral sampler's noise goes on from the clip's generator, as the extension's, so its passes differ.)"""
    plain = animate(settings(tiny_model[0], motion_dir, sampler=sampler), held)
    events = []
    same = animate(settings(tiny_model[0], motion_dir, sampler=sampler, freeinit=True, freeinit_ds=0.0), held,
                   on_event=events.append)
    assert np.abs(pixels(same) - pixels(plain)).max() <= 1  # the noise divided by its sigma and scaled again
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 3 * 3 and len(progress) == 9
    other = animate(settings(tiny_model[0], motion_dir, sampler=sampler, freeinit=True), held)
    assert np.abs(pixels(other) - pixels(plain)).mean() > 0.5


def test_a_clip_from_frames_and_a_controlled_clip_take_freeinit(tiny_model, motion_dir, held, tmp_path):
    """From frames (img2img): the passes' noise is what is added to the encoded frames; with a ControlNet unit whose
    guidance window ends early (DDIM counts the window's steps per pass): d_s 0 gives the clip without FreeInit."""
    from PIL import Image

    from personae.models.controlnet import write_tiny_controlnet

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        a = np.zeros((32, 32, 3), np.uint8)
        a[8:20, 2 + 3 * i:14 + 3 * i] = 255
        Image.fromarray(a).save(frames / f"{i}.png")
    net = write_tiny_controlnet(tmp_path / "net", base=tiny_model[0], seed=0)
    for extra in ({"init_image": str(frames), "strength": 0.7},
                  {"controls": [{"type": "raw", "image": str(frames), "model": str(net)}], "control_end": 0.4}):
        base = settings(tiny_model[0], motion_dir, sampler="DDIM", steps=4, **extra)
        plain = animate(base, held)
        same = animate(base.model_copy(update={"freeinit": True, "freeinit_ds": 0.0}), held)
        assert np.abs(pixels(same) - pixels(plain)).max() <= 1
        other = animate(base.model_copy(update={"freeinit": True}), held)
        assert np.abs(pixels(other) - pixels(plain)).mean() > 0.5


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_freeinit_on_a_zero_terminal_snr_schedule_is_refused_before_sampling(tiny_model, motion_dir, held, sampler):
    """Diffused to the last step of a Zero Terminal SNR schedule nothing of a pass is left: every pass would be the
    first again, so it is said instead of drawn N times."""
    s = settings(tiny_model[0], motion_dir, sampler=sampler, noise_schedule="Zero Terminal SNR", freeinit=True)
    with pytest.raises(UserError, match="Zero Terminal SNR noise schedule keeps nothing") as err:
        animate(s, held, on_event=lambda e: isinstance(e, Progress) and pytest.fail("sampling started"))
    assert "Leave out --freeinit" in str(err.value)


@pytest.mark.parametrize("data, says", [
    ({"freeinit_iters": 1}, "freeinit_iters"),
    ({"freeinit_filter": "sharp"}, "freeinit_filter"),
    ({"freeinit_ds": 1.5}, "freeinit_ds"),
])
def test_bad_freeinit_settings_are_one_readable_error(data, says):
    with pytest.raises(UserError, match=says):
        parse_settings(AnimateSettings, {"model": "m", "motion_adapter": "a", "prompt": "p", **data}, "animate")


def test_the_command_line_and_the_ui_take_freeinit(tiny_model, motion_dir, tmp_path):
    from personae.cli.animate_cmd import settings_from_args
    from personae.cli.main import build_parser

    args = build_parser().parse_args(["animate", "--model", str(tiny_model[0]), "--motion-adapter", str(motion_dir),
                                      "--prompt", "a cat", "--freeinit", "--freeinit-iters", "4", "--freeinit-filter",
                                      "gaussian", "--freeinit-ds", "0.3", "--freeinit-dt", "0.2", "--out", "c.gif"])
    s = settings_from_args(args)
    assert (s.freeinit, s.freeinit_iters, s.freeinit_filter, s.freeinit_ds, s.freeinit_dt) == (True, 4, "gaussian",
                                                                                               0.3, 0.2)
    from personae.jobs.queue import JobQueue
    from personae.web.app import build
    from personae.web.workspace import Workspace

    shown = {getattr(b, "elem_id", None) for b in build(Workspace(tmp_path / "ws"), JobQueue()).blocks.values()}
    assert {"animate-freeinit", "animate-freeinit-iters", "animate-freeinit-filter", "animate-freeinit-ds",
            "animate-freeinit-dt"} <= shown


def test_the_time_asked_about_counts_freeinits_passes():
    from personae.cli.animate_cmd import clip_seconds

    plain = AnimateSettings(model="m", motion_adapter="a", prompt="p", device="cpu", width=512, height=512)
    three = plain.model_copy(update={"freeinit": True})
    assert clip_seconds(three) == pytest.approx(3 * clip_seconds(plain))
    controlled = plain.model_copy(update={"controls": [{"type": "canny", "image": "x.png"}]})
    assert clip_seconds(controlled) > clip_seconds(plain)
