"""A clip from one picture (`personae animate --init-image PICTURE`), as A1111's AnimateDiff img2img draws it:
frame i starts from 1 - i**power / scale of the picture, the rest noise, and an optional last frame the same way
from the end (inference/picture_start.py). The shapes world's test is in tests/test_world_motion.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from personae.config.animate import AnimateSettings
from personae.config.base import parse_settings
from personae.errors import UserError
from personae.inference.animate import animate, open_for
from personae.inference.picture_start import fade, start_from_picture, weights
from personae.media.png import parse_parameters


def test_the_weights_are_the_extensions():
    """init_alpha = 1 - i**power / scale, clipped at 0; the last frame's counted back from the end; where the two
    add up past 1, both are scaled to sum to 1."""
    assert torch.allclose(fade(5, 1.0, 32.0), torch.tensor([1 - i / 32 for i in range(5)]))
    assert torch.allclose(fade(6, 2.0, 9.0), torch.tensor([max(0.0, 1 - i ** 2 / 9) for i in range(6)]))
    alpha, beta = weights(4, 1.0, 2.0, (1.0, 2.0))
    raw_a, raw_b = [1, 0.5, 0, 0], [0, 0, 0.5, 1]
    assert torch.allclose(alpha, torch.tensor(raw_a)) and torch.allclose(beta, torch.tensor(raw_b))
    alpha, beta = weights(3, 1.0, 4.0, (1.0, 4.0))  # 1, .75, .5 and .5, .75, 1: every frame over 1
    total = torch.tensor([1.5, 1.5, 1.5])
    assert torch.allclose(alpha, torch.tensor([1, 0.75, 0.5]) / total)
    assert torch.allclose(alpha + beta, torch.ones(3))
    assert torch.equal(weights(3, 1.0, 4.0)[1], torch.zeros(3))


def test_the_start_is_blended_once_before_the_strengths_noise():
    """The scheduler's add_noise gets alpha * first + beta * last + (1 - alpha - beta) * noise from the clip's
    generator, in diffusers' video-to-video layout (batch, frames, channels, h, w); a second call (FreeInit's next
    pass) gets the same start."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(3)
    samples = torch.randn(1, 4, 2, 3, 3, generator=g)  # 4 frames: the first picture's latent, then the last's
    samples[:, 1:3] = samples[:, :1]
    noise, t = torch.randn(samples.shape, generator=g), scheduler.timesteps[:1]
    alpha, beta = weights(4, 1.0, 2.0, (1.0, 2.0))
    start_from_picture(scheduler, alpha, beta, torch.Generator().manual_seed(5))
    got = scheduler.add_noise(samples, noise, t)
    eps = torch.randn(samples.shape, generator=torch.Generator().manual_seed(5))
    a, b = alpha.view(1, -1, 1, 1, 1), beta.view(1, -1, 1, 1, 1)
    start = a * samples[:, :1] + b * samples[:, -1:] + (1 - a - b) * eps
    assert torch.allclose(got, DDIMScheduler.add_noise(scheduler, start, noise, t), atol=1e-6)
    assert torch.equal(scheduler.add_noise(samples, noise, t), got)




@pytest.fixture(scope="module")
def held(tiny_model, motion_dir):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield open_for(settings(tiny_model[0], motion_dir))
    torch.set_num_threads(before)


def settings(model, motion, **kw):
    return AnimateSettings(**{"model": str(model), "motion_adapter": str(motion), "prompt": "a photo of a cat",
                              "steps": 3, "seed": 7, "width": 32, "height": 32, "frames": 6, "context": 6,
                              "context_stride": 2, "sampler": "Euler", **kw})


def pixels(clip):
    return np.stack([np.asarray(f, dtype=np.int16) for f in clip.frames])


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for name in ("first", "last"):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
    (root / "frames").mkdir()
    for i in range(6):
        Image.open(root / "first.png").save(root / "frames" / f"{i}.png")
    return root


@pytest.mark.slow
def test_one_picture_fades_and_a_last_frame_ends_the_clip(tiny_model, motion_dir, held, pictures):
    """One picture: the extension's fade (in the infotext); a larger scale keeps more of the picture; a last frame
    changes the clip's end more than its start; a folder of frames is not faded (no such keys); FreeInit takes it."""
    base = settings(tiny_model[0], motion_dir, init_image=str(pictures / "first.png"), strength=0.6)
    faded = animate(base, held)
    params = parse_parameters(faded.parameters)[2]
    assert (params["Latent power"], params["Latent scale"], params["Denoising strength"]) == ("1", "32", "0.6")
    sharp = animate(base.model_copy(update={"latent_scale": 2.0}), held)
    assert np.abs(pixels(sharp)[0] - pixels(faded)[0]).mean() < np.abs(pixels(sharp)[-1] - pixels(faded)[-1]).mean()
    ended = animate(base.model_copy(update={"last_frame": str(pictures / "last.png"), "latent_scale_last": 4.0}),
                    held)
    change = np.abs(pixels(ended) - pixels(faded)).mean(axis=(1, 2, 3))
    assert change[-1] > 2 * change[0], change
    params = parse_parameters(ended.parameters)[2]
    assert (params["Latent power last"], params["Latent scale last"]) == ("1", "4")
    folder = animate(base.model_copy(update={"init_image": str(pictures / "frames")}), held)
    assert "Latent power" not in parse_parameters(folder.parameters)[2]
    free = animate(base.model_copy(update={"freeinit": True, "freeinit_iters": 2}), held)
    assert len(free.frames) == 6 and not np.array_equal(pixels(free), pixels(faded))


@pytest.mark.slow
def test_a_last_frame_without_one_first_picture_is_refused(tiny_model, motion_dir, pictures):
    with pytest.raises(UserError, match="last_frame is the picture a clip from a picture ends at"):
        parse_settings(AnimateSettings, {"model": "m", "motion_adapter": "a", "prompt": "p",
                                         "last_frame": str(pictures / "last.png")}, "animate")
    s = settings(tiny_model[0], motion_dir, init_image=str(pictures / "frames"), last_frame=str(pictures / "last.png"))
    with pytest.raises(UserError, match="is not one picture"):
        animate(s, on_event=lambda e: pytest.fail(f"went on to {e}"))
