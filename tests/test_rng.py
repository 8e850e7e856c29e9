"""A1111's random number sources and ENSD (inference/rng.py): the GPU's numbers computed on the CPU, checked
against Random123's answers and a CUDA print; each image's draws against a hand-written Euler a loop fed the
noise A1111's ImageRNG would give it; the infotext both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from personae.config.generate import GenerateSettings
from personae.inference.rng import gpu_randn, image_generator, philox4x32_10

# Random123's published known answers for Philox4x32-10 (its tests/kat_vectors): counter, key, output
PHILOX_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# torch.manual_seed(0); torch.randn(8, 8, device="cuda"), as printed on an NVIDIA GPU (torch 2.2) in Kapil
# Sharma's GPU MODE lecture 18 notes: the numbers every A1111 picture without an "RNG" key starts from
CUDA_SEED_0 = [
    [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284],
    [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820],
    [-0.1271, 1.2169, 1.4353, 1.0605, -0.4941, -1.4244, -0.7244, -1.2973],
    [0.0697, -0.0074, 1.8969, 0.6878, -0.0779, -0.8373, 1.3506, -0.2879],
    [-0.5965, -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435, 1.5150],
    [0.0141, 0.4532, 1.6349, 0.7124, -0.1806, 1.0252, -1.4622, -0.7554],
    [-0.1836, 0.3824, 0.3918, -0.0830, 0.8971, -1.1123, 0.1116, 0.4863],
    [-0.5499, -0.3231, -0.5469, 0.9049, 0.2837, 0.1210, 0.4730, -1.0823],
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_ANSWERS)
def test_philox_gives_random123s_answers(counter, key, expected):
    out = philox4x32_10(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32)[:, None])
    assert tuple(int(x) for x in out[:, 0]) == expected


def test_gpu_numbers_are_what_an_nvidia_gpu_prints():
    drawn = gpu_randn(0, 0, (8, 8))
    assert drawn.dtype == torch.float32
    assert torch.allclose(drawn, torch.tensor(CUDA_SEED_0), atol=5.1e-5)  # the print's 4 decimals
    assert not torch.allclose(drawn, torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), atol=0.1)
    # the same numbers whatever the shape: element i is Philox's subsequence i
    assert torch.equal(gpu_randn(0, 0, (1, 4, 4, 4)).flatten(), drawn.flatten())
    # a 64-bit seed keys both halves
    assert not torch.equal(gpu_randn(2**32, 0, (16,)), gpu_randn(0, 0, (16,)))


@pytest.mark.parametrize("source", ["CPU", "GPU", "NV"])
def test_each_image_draws_as_a1111s_image_rng(source):
    """First draw from the seed; later draws continue the seed's stream, or, with ENSD, start seed + ENSD's."""
    shape = (4, 8, 8)

    def stream(seed, count):
        if source == "CPU":
            g = torch.Generator().manual_seed(seed)
            return [torch.randn(shape, generator=g) for _ in range(count)]
        return [gpu_randn(seed, k, shape) for k in range(count)]

    plain = image_generator(5, source)
    assert all(torch.equal(a, plain.randn(shape)) for a in stream(5, 3))
    delta = image_generator(5, source, ensd=31337)
    first, later = stream(5, 1)[0], stream(5 + 31337, 2)
    assert torch.equal(delta.randn(shape), first)
    assert all(torch.equal(a, delta.randn(shape)) for a in later)


# ---------------------------------------------------------------- whole pictures against a hand-written Euler a


def _settings(model, **kw) -> GenerateSettings:
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "negative": "blurry", "steps": 4,
                               "seed": 11, "width": 64, "height": 64, "sampler": "Euler a", "cfg": 5.0, **kw})


def _euler_a(session, settings: GenerateSettings, start: torch.Tensor, step_noise) -> np.ndarray:
    """k-diffusion's sample_euler_ancestral on A1111's sigmas (personae's scheduler gives them and the UNet's
    fractional steps; tests/test_ksampler.py checks them against k-diffusion) and the UNet, CFG as A1111 does it:
    `start` the starting noise, `step_noise(i)` the noise added after step i."""
    from personae.inference.samplers import get_sampler

    pipe = session.pipe
    scheduler = get_sampler("Euler a").make(dict(pipe.scheduler.config))
    scheduler.set_timesteps(settings.steps)
    cond, uncond = pipe.encode_prompt(settings.prompt, "cpu", 1, True, settings.negative)
    x = start * scheduler.init_noise_sigma
    sigmas = scheduler.sigmas
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            sigma, after = sigmas[i], sigmas[i + 1]
            model_in = torch.cat([x, x]) / (sigma**2 + 1) ** 0.5
            eps_uncond, eps = pipe.unet(model_in, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            denoised = x - (eps_uncond + settings.cfg * (eps - eps_uncond)) * sigma
            up = (after**2 * (sigma**2 - after**2) / sigma**2) ** 0.5
            down = (after**2 - up**2) ** 0.5
            x = x + (x - denoised) / sigma * (down - sigma)
            if after > 0:
                x = x + step_noise(i) * up
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0], dtype=np.int16)


def _drawn(session, settings) -> np.ndarray:
    from personae.inference.txt2img import txt2img

    return np.asarray(txt2img(settings, session)[0].image, dtype=np.int16)


SHAPE = (1, 4, 8, 8)  # the tiny model's latents at 64 px


@pytest.mark.parametrize("source,ensd", [("CPU", 0), ("CPU", 31337), ("GPU", 0), ("GPU", 31337)])
def test_pictures_take_the_sources_numbers_at_every_step(tiny_model, tiny_session, source, ensd):
    settings = _settings(tiny_model[0], rng=source, ensd=ensd)
    if source == "CPU":
        seed_stream = torch.Generator().manual_seed(11)
        start = torch.randn(SHAPE, generator=seed_stream)
        steps = seed_stream if not ensd else torch.Generator().manual_seed(11 + ensd)
        noise = [torch.randn(SHAPE, generator=steps) for _ in range(settings.steps)]
    else:
        start = gpu_randn(11, 0, SHAPE)
        noise = [gpu_randn(11 + ensd, k + (0 if ensd else 1), SHAPE) for k in range(settings.steps)]
    expected = _euler_a(tiny_session, settings, start, lambda i: noise[i])
    assert np.abs(_drawn(tiny_session, settings) - expected).max() <= 1
    # and a wrong stream would show: the step noise of the seed instead of seed + ENSD, or CPU for GPU
    wrong = _euler_a(tiny_session, settings, start, lambda i: torch.randn(SHAPE, generator=torch.Generator()
                                                                          .manual_seed(99 + i)))
    assert np.abs(_drawn(tiny_session, settings) - wrong).max() > 8


def test_ensd_leaves_samplers_without_step_noise_alone(tiny_model, tiny_session):
    euler = _settings(tiny_model[0], sampler="Euler", rng="GPU")
    assert np.array_equal(_drawn(tiny_session, euler), _drawn(tiny_session, euler.model_copy(update={"ensd": 31337})))
    ancestral = _settings(tiny_model[0], rng="GPU")
    assert not np.array_equal(_drawn(tiny_session, ancestral),
                              _drawn(tiny_session, ancestral.model_copy(update={"ensd": 31337})))


def test_variation_seeds_step_noise_continues_after_the_starting_draw(tiny_model, tiny_session):
    """A1111's ImageRNG draws the seed's noise with the image's own generator, even when a variation seed bends
    it: the first step's noise is the generator's second draw (it used to be its first again)."""
    from personae.inference.variation import start_latents

    settings = _settings(tiny_model[0], subseed=23, subseed_strength=0.3)
    start = start_latents([11], [23], 0.3, SHAPE[1:])
    stream = torch.Generator().manual_seed(11)
    torch.randn(SHAPE, generator=stream)  # the starting draw
    noise = [torch.randn(SHAPE, generator=stream) for _ in range(settings.steps)]
    expected = _euler_a(tiny_session, settings, start, lambda i: noise[i])
    assert np.abs(_drawn(tiny_session, settings) - expected).max() <= 1


def test_infotext_names_the_source_as_a1111_reads_it(tiny_model, tmp_path):
    from personae.jobs.generate import settings_from_infotext
    from personae.media.png import infotext_values

    written = infotext_values(_settings(tiny_model[0], ensd=31337))
    assert (written["RNG"], written["ENSD"]) == ("CPU", 31337)  # A1111's default is GPU: CPU must be said
    gpu = infotext_values(_settings(tiny_model[0], rng="GPU"))
    # personae names its source even at A1111's default: its own infotext without the key means CPU (written
    # before it had sources); A1111 reads "RNG: GPU" as its default
    assert gpu["RNG"] == "GPU" and "ENSD" not in gpu
    a1111 = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, ENSD: 31337, Version: v1.10.1"
    read = settings_from_infotext(a1111, tmp_path)
    assert (read["rng"], read["ensd"]) == ("GPU", 31337)
    assert settings_from_infotext(a1111.replace("ENSD", "RNG: NV, ENSD"), tmp_path)["rng"] == "NV"
    assert settings_from_infotext(a1111.replace("ENSD", "RNG: CPU, ENSD"), tmp_path)["rng"] == "CPU"
    ours = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Version: personae 0.1.0"
    assert "rng" not in settings_from_infotext(ours, tmp_path)  # personae's own (before it wrote RNG) drew on the CPU
    assert settings_from_infotext(ours.replace("Version", "RNG: GPU, Version"), tmp_path)["rng"] == "GPU"


def test_img2img_noise_is_the_images_first_draw_and_the_vae_sample_draws_aside(tiny_model, tiny_session, photo):
    """A1111's img2img: the init image encoded without touching the image's generator, whose first draw is the
    noise (diffusers alone would spend that draw on the VAE's sample)."""
    from PIL import Image

    from personae.inference.samplers import get_sampler

    pipe = tiny_session.pipe
    settings = _settings(tiny_model[0], sampler="Euler", rng="GPU", init_image=str(photo), strength=0.5)
    seen: list[torch.Tensor] = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0][0].clone()))
    try:
        _drawn(tiny_session, settings)
    finally:
        hook.remove()
    with torch.no_grad():
        posterior = pipe.vae.encode(pipe.image_processor.preprocess(Image.open(photo).convert("RGB"))).latent_dist
    aside = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    init = (posterior.mean + posterior.std * aside) * pipe.vae.config.scaling_factor
    scheduler = get_sampler("Euler").make(dict(pipe.scheduler.config))
    scheduler.set_timesteps(settings.steps)
    sigma = scheduler.sigmas[settings.steps - int(settings.steps * settings.strength) - 1]  # A1111's start
    expected = (init + gpu_randn(11, 0, SHAPE) * sigma) / (sigma**2 + 1) ** 0.5
    assert torch.allclose(seen[0], expected[0], atol=1e-4)
    second = (init + gpu_randn(11, 1, SHAPE) * sigma) / (sigma**2 + 1) ** 0.5
    assert not torch.allclose(seen[0], second[0], atol=0.1)


def test_the_hires_pass_starts_from_the_variation_seeds_noise_too(tiny_model, tiny_session):
    """A1111's hires pass makes its starting noise as the base pass does, at the new size: at variation strength 1
    the whole picture, redraw included, is the variation seed's."""
    from personae.inference.variation import start_latents, variation_generators

    g = variation_generators([7], [9], 0.3, "GPU", 0, drawn_at=(6, 6))[0]
    assert torch.equal(g.randn((1, 4, 12, 12)), start_latents([7], [9], 0.3, (4, 12, 12), (4, 6, 6), "GPU"))
    assert torch.equal(g.randn((1, 4, 12, 12)), gpu_randn(7, 1, (1, 4, 12, 12)))  # then the seed's stream goes on
    hires = {"sampler": "Euler", "hires_scale": 1.5, "hires_denoise": 0.6, "hires_upscaler": "latent"}
    own = _drawn(tiny_session, _settings(tiny_model[0], seed=9, **hires))
    toward = _drawn(tiny_session, _settings(tiny_model[0], seed=7, subseed=9, subseed_strength=1.0, **hires))
    assert own.shape == (96, 96, 3) and np.abs(toward - own).max() <= 1
