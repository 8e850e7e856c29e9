"""A1111's samplers as A1111 runs them (inference/ksampler.py, inference/sigmas.py), checked against k-diffusion
itself: the package A1111 and ComfyUI sample with (0.1.1.post1, installed for the tests without its dependencies),
its sample_* functions run on the tiny model's UNet with A1111's classifier-free guidance and random numbers. The
pictures personae draws through diffusers' pipelines must be k-diffusion's to float rounding; diffusers' schedulers
of the same names, which personae used before, are not."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from personae.config.generate import GenerateSettings
from personae.inference.ksampler import KSAMPLERS, KDiffusionScheduler, img2img_steps
from personae.inference.samplers import get_sampler, k_tuning, with_schedule_type
from personae.inference.sigmas import AYS, SCHEDULES, ModelSigmas, schedule_sigmas

SHAPE = (1, 4, 8, 8)  # the tiny model's latents at 64 px


@pytest.fixture(scope="module")
def k():
    """k_diffusion.sampling and k_diffusion.external, loaded alone: the package's __init__ imports its training
    code, which needs torchvision (it cannot be installed beside our torch). The two modules take one helper from
    k_diffusion.utils (which imports torchvision too): append_dims, restated here."""
    spec = importlib.util.find_spec("k_diffusion")
    saved = {name: sys.modules.get(name) for name in ("k_diffusion", "k_diffusion.utils")}
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    import k_diffusion.external
    import k_diffusion.sampling

    yield types.SimpleNamespace(sampling=k_diffusion.sampling, external=k_diffusion.external)
    for name in ("k_diffusion", "k_diffusion.utils", "k_diffusion.sampling", "k_diffusion.external"):
        sys.modules.pop(name, None)
    sys.modules.update({name: module for name, module in saved.items() if module is not None})


class _CompVisModel(torch.nn.Module):
    """The tiny UNet as an LDM model: k-diffusion's CompVisDenoiser reads alphas_cumprod and calls apply_model. The
    LDM code A1111 loads makes alphas_cumprod from float64 betas and keeps it in float32."""

    def __init__(self, pipe):
        super().__init__()
        config = pipe.scheduler.config
        betas = torch.linspace(config.beta_start ** 0.5, config.beta_end ** 0.5, config.num_train_timesteps,
                               dtype=torch.float64) ** 2
        self.unet = pipe.unet
        self.register_buffer("alphas_cumprod", torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0),
                                                            dtype=torch.float32))

    def apply_model(self, x, t, cond):
        return self.unet(x, t, encoder_hidden_states=cond).sample


def _denoiser(k, pipe, quantize: bool = False):
    return k.external.CompVisDenoiser(_CompVisModel(pipe), quantize=quantize)


def _k_sigmas(k, denoiser, schedule: str, steps: int, discard: bool) -> torch.Tensor:
    n = steps + 1 if discard else steps
    lo, hi = denoiser.sigmas[0].item(), denoiser.sigmas[-1].item()
    sigmas = {"Uniform": lambda: denoiser.get_sigmas(n),
              "Karras": lambda: k.sampling.get_sigmas_karras(n, lo, hi),
              "Exponential": lambda: k.sampling.get_sigmas_exponential(n, lo, hi),
              "Polyexponential": lambda: k.sampling.get_sigmas_polyexponential(n, lo, hi)}[schedule]()
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def _k_run(k, pipe, settings: GenerateSettings, sigmas: torch.Tensor, x: torch.Tensor, stream,
           skip=None, **parameters) -> torch.Tensor:
    """k-diffusion's sampler of `settings.sampler` from x over `sigmas`, A1111's CFG (on the denoised outputs),
    its ancestral noise the generator `stream`'s next draws, its SDE noise a Brownian tree of the seed; `skip(call,
    sigma)`: the calls where A1111's CFGDenoiser leaves the negative prompt out (the prompt's denoised alone)."""
    base = get_sampler(settings.sampler).options["sampler"]
    fn = KSAMPLERS[base].function
    denoiser = _denoiser(k, pipe, settings.quantize)
    cond, uncond = pipe.encode_prompt(settings.prompt, "cpu", 1, True, settings.negative)
    calls = [0]

    def cfg(x, sigma, **_):
        calls[0] += 1
        if skip is not None and skip(calls[0] - 1, sigma.item()):
            return denoiser(x, sigma, cond=cond)
        out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
        d_cond, d_uncond = out.chunk(2)
        return d_uncond + (d_cond - d_uncond) * settings.cfg

    extra = {}
    if fn.replace("_heun", "") in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        extra["noise_sampler"] = k.sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                     seed=[settings.seed])
    elif "ancestral" in fn:
        extra["noise_sampler"] = lambda sigma, sigma_next: torch.randn(SHAPE, generator=stream)
    if fn.endswith("_heun"):
        fn, extra["solver_type"] = fn[: -len("_heun")], "heun"
    if KSAMPLERS[base].noisy:
        extra["eta"] = settings.eta
    extra.update(parameters)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's float-precision notes on the tree's ends
        return getattr(k.sampling, "sample_" + fn)(cfg, x, sigmas, disable=True, **extra)


def _decoder_input(pipe, run) -> torch.Tensor:
    """What the VAE's decoder was given while `run()` ran (the final latents, as the VAE sees them)."""
    seen = []
    handle = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen[-1]


def _settings(model, **kw) -> GenerateSettings:
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "negative": "blurry", "steps": 6,
                               "seed": 11, "width": 64, "height": 64, "cfg": 5.0, "rng": "CPU", **kw})


def _personae(session, settings) -> torch.Tensor:
    from personae.inference.txt2img import txt2img

    return _decoder_input(session.pipe, lambda: txt2img(settings, session))


def _reference(k, session, settings) -> torch.Tensor:
    pipe = session.pipe
    sampler = get_sampler(settings.sampler)
    kind = KSAMPLERS[sampler.options["sampler"]]
    sigmas = _k_sigmas(k, _denoiser(k, pipe), sampler.options["schedule"], settings.steps, kind.discard_penultimate)
    stream = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(SHAPE, generator=stream) * sigmas[0]
    final = _k_run(k, pipe, settings, sigmas, x, stream)
    with torch.no_grad():
        return _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))


CASES = ["Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE",
         "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 2M SDE Karras",
         "Euler a Karras", "DPM2 Karras", "DPM++ 2M Exponential", "Heun Polyexponential"]


@pytest.mark.parametrize("name", CASES)
def test_each_sampler_draws_k_diffusions_picture(k, tiny_model, tiny_session, name):
    settings = _settings(tiny_model[0], sampler=name)
    ours, theirs = _personae(tiny_session, settings), _reference(k, tiny_session, settings)
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= 2e-5 * scale, name  # measured: 0.8-2.6e-6


# What diffusers' scheduler of the same name (personae's sampler before) draws, off A1111's picture
DIFFUSERS_BEFORE = {"DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                                        "use_karras_sigmas": True}),
                    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
                    "DPM2": ("KDPM2DiscreteScheduler", {})}


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2S a", "DPM++ SDE Karras", "DPM++ 2M SDE"])
def test_eta_scales_the_fresh_noise_as_k_diffusions_eta(k, tiny_model, tiny_session, name):
    settings = _settings(tiny_model[0], sampler=name, eta=0.4)
    ours, theirs = _personae(tiny_session, settings), _reference(k, tiny_session, settings)
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()
    assert not torch.allclose(ours, _personae(tiny_session, settings.model_copy(update={"eta": 1.0})), atol=1e-3)


def test_eta_is_written_and_read_as_a1111_does(tiny_model, tiny_session, tmp_path):
    """"Eta" when not 1 for a sampler that adds noise; "Eta DDIM" when not 0 for DDIM (it changes the picture);
    neither otherwise."""
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    def drawn(**kw):
        out = txt2img(_settings(tiny_model[0], steps=3, **kw), tiny_session)[0]
        save_png(out.image, tmp_path / "p.png", out.parameters)
        params, again = parse_parameters(out.parameters)[2], settings_from_png(tmp_path / "p.png")
        return np.asarray(out.image, dtype=np.int16), {k: params.get(k) for k in ("Eta", "Eta DDIM")}, again

    _, said, again = drawn(sampler="Euler a", eta=0.5)
    assert said == {"Eta": "0.5", "Eta DDIM": None} and again["eta"] == 0.5
    assert drawn(sampler="Euler", eta=0.5)[1] == {"Eta": None, "Eta DDIM": None}  # Euler adds no noise
    plain, said, _ = drawn(sampler="DDIM")
    noisy, said_noisy, again = drawn(sampler="DDIM", eta_ddim=0.7)
    assert said == {"Eta": None, "Eta DDIM": None} and said_noisy == {"Eta": None, "Eta DDIM": "0.7"}
    assert again["eta_ddim"] == 0.7 and np.abs(plain - noisy).max() > 8


@pytest.mark.parametrize("name", list(DIFFUSERS_BEFORE))
def test_diffusers_schedulers_of_the_same_names_are_measurably_off(k, tiny_model, tiny_session, name):
    """The check above can tell: diffusers' scheduler of the name, in the same pipeline, is 10x further off
    (measured: DPM++ 2M Karras 0.23 % of the latents' range, 2600x personae's; DPM++ 2M and DPM2 60 %, another
    schedule)."""
    import diffusers

    settings = _settings(tiny_model[0], sampler=name)
    cls, options = DIFFUSERS_BEFORE[name]
    pipe = tiny_session.pipe
    scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **options)
    cond, uncond = pipe.encode_prompt(settings.prompt, "cpu", 1, True, settings.negative)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(settings.seed))
    with torch.no_grad():
        before = _decoder_input(pipe, lambda: pipe.__class__(**{**pipe.components, "scheduler": scheduler})(
            prompt_embeds=cond, negative_prompt_embeds=uncond, latents=start, num_inference_steps=settings.steps,
            guidance_scale=settings.cfg, height=64, width=64))
    theirs, ours = _reference(k, tiny_session, settings), _personae(tiny_session, settings)
    assert (before - theirs).abs().max() > 10 * (ours - theirs).abs().max()


@pytest.mark.parametrize(("multiplier", "extra"), [(1.0, 0.0), (0.8, 0.0), (0.8, 0.3)])
def test_img2img_runs_a1111s_steps_from_a1111s_start(k, tiny_model, tiny_session, photo, multiplier, extra):
    """A1111's img2img: of `steps` sigmas, the last int(strength x steps) + 1 steps, from the encoded picture +
    the seed's first draw x "Noise multiplier" x the first of them (diffusers would run one step fewer); its "Extra
    noise" adds that draw again x the extra (xi += noise x extra)."""
    from PIL import Image

    settings = _settings(tiny_model[0], sampler="DPM++ 2M Karras", init_image=str(photo), strength=0.6, steps=10,
                         noise_multiplier=multiplier, extra_noise=extra)
    pipe = tiny_session.pipe
    ours = _personae(tiny_session, settings)
    denoiser = _denoiser(k, pipe)
    sigmas = _k_sigmas(k, denoiser, "Karras", settings.steps, False)
    t_enc = int(min(settings.strength, 0.999) * settings.steps)
    schedule = sigmas[settings.steps - t_enc - 1:]
    assert len(schedule) - 1 == 7
    with torch.no_grad():
        image = pipe.image_processor.preprocess(Image.open(photo).convert("RGB"), height=64, width=64)
        encoded = pipe.vae.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(settings.seed))
        encoded = encoded * pipe.vae.config.scaling_factor
    stream = torch.Generator().manual_seed(settings.seed)
    noise = torch.randn(SHAPE, generator=stream) * multiplier
    x = encoded + noise * schedule[0] + noise * extra
    final = _k_run(k, pipe, settings, schedule, x, stream)
    with torch.no_grad():
        theirs = _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()


def _euler_a_img2img(k, denoiser, cfg, init, steps: int, strength: float, seed: int) -> torch.Tensor:
    """k-diffusion's Euler a as A1111 runs img2img: the last int(strength x steps) + 1 sigmas of the schedule, the
    picture plus the seed's noise at the first, the step noise from the same generator."""
    sigmas = denoiser.get_sigmas(steps)
    schedule = sigmas[steps - int(strength * steps) - 1:]
    stream = torch.Generator().manual_seed(seed)
    x = init + torch.randn(SHAPE, generator=stream) * schedule[0]
    with torch.no_grad():
        return k.sampling.sample_euler_ancestral(
            cfg, x, schedule, disable=True, noise_sampler=lambda s, n: torch.randn(SHAPE, generator=stream))


@pytest.mark.parametrize("content", ["original", "fill", "latent noise", "latent nothing"])
def test_inpainting_an_ordinary_model_is_a1111s(k, tiny_model, tiny_session, photo, tmp_path, content):
    """A1111's inpainting with a 4-channel model: the kept part of every denoised estimate is the encoded picture
    (its CFGDenoiser's init_latent x mask + nmask x denoised, the mask rounded at the latents' size), and so is the
    kept part of the result; diffusers' inpainting pipeline blends noisy latents instead. "Masked content" other
    than original encodes the filled picture; latent noise / nothing then replace its masked latents by the seed's
    first draw (the starting noise) or zeros."""
    from PIL import Image

    from personae.inference.img2img import fill_masked, load_mask

    drawn = Image.new("L", (64, 64))
    drawn.paste(255, (16, 8, 48, 40))
    drawn.save(tmp_path / "mask.png")
    settings = _settings(tiny_model[0], sampler="Euler a", init_image=str(photo), mask=str(tmp_path / "mask.png"),
                         strength=0.75, steps=8, masked_content=content)
    pipe = tiny_session.pipe
    ours = _personae(tiny_session, settings)
    # A1111's latent mask: the blurred mask at the latents' size (PIL's default filter), rounded
    blurred = load_mask(settings.mask, (64, 64), settings.mask_blur)
    small = blurred.convert("RGB").resize((8, 8))
    latmask = torch.from_numpy(np.around(np.asarray(small, dtype=np.float32)[..., 0] / 255))[None, None]
    mask, nmask = 1.0 - latmask, latmask
    picture = Image.open(photo).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    if content != "original":
        picture = fill_masked(picture, blurred)
    with torch.no_grad():
        image = pipe.image_processor.preprocess(picture, height=64, width=64)
        init = pipe.vae.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(settings.seed))
        init = init * pipe.vae.config.scaling_factor
    first = torch.randn(SHAPE, generator=torch.Generator().manual_seed(settings.seed))
    init = {"latent noise": init * mask + first * nmask, "latent nothing": init * mask}.get(content, init)
    denoiser = _denoiser(k, pipe)
    cond, uncond = pipe.encode_prompt(settings.prompt, "cpu", 1, True, settings.negative)

    def cfg(x, sigma, **_):
        d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                    cond=torch.cat([cond, uncond])).chunk(2)
        return init * mask + nmask * (d_uncond + (d_cond - d_uncond) * settings.cfg)

    final = _euler_a_img2img(k, denoiser, cfg, init, settings.steps, 0.75, settings.seed) * nmask + init * mask
    with torch.no_grad():
        theirs = _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))
    assert 4 < nmask.sum() < 60  # some of the latents redrawn, some kept
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()


def test_soft_inpainting_is_the_extensions_blend_in_k_diffusions_loop(k, tiny_model, tiny_session, photo, tmp_path):
    """A1111's Soft inpainting around k-diffusion's own Euler a: the latent mask unrounded, every denoised estimate
    mixed with the encoded picture by nmask ** (sigma x 0.5) (vectors linearly, their lengths with power 4:
    the extension's latent_blend, written out here), the result left unblended."""
    from PIL import Image

    from personae.inference.img2img import load_mask

    drawn = Image.new("L", (64, 64))
    drawn.paste(255, (16, 8, 48, 40))
    drawn.save(tmp_path / "mask.png")
    settings = _settings(tiny_model[0], sampler="Euler a", init_image=str(photo), mask=str(tmp_path / "mask.png"),
                         strength=0.75, steps=8, mask_blur=6, soft_inpainting=True)
    pipe = tiny_session.pipe
    ours = _personae(tiny_session, settings)
    blurred = load_mask(settings.mask, (64, 64), settings.mask_blur)
    small = blurred.convert("RGB").resize((8, 8))
    nmask = torch.from_numpy(np.asarray(small, dtype=np.float32)[..., 0] / 255)[None, None]
    picture = Image.open(photo).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS)
    with torch.no_grad():
        image = pipe.image_processor.preprocess(picture, height=64, width=64)
        init = pipe.vae.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(settings.seed))
        init = init * pipe.vae.config.scaling_factor
    denoiser = _denoiser(k, pipe)
    cond, uncond = pipe.encode_prompt(settings.prompt, "cpu", 1, True, settings.negative)

    def blend(a, b, t):
        mixed = a * (1 - t) + b * t
        length = ((a.norm(dim=1, keepdim=True).double() ** 4 * (1 - t.double())
                   + b.norm(dim=1, keepdim=True).double() ** 4 * t.double()) ** 0.25)
        return mixed * (length / (mixed.norm(dim=1, keepdim=True).double() + 1e-5)).float()

    def cfg(x, sigma, **_):
        d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                    cond=torch.cat([cond, uncond])).chunk(2)
        denoised = d_uncond + (d_cond - d_uncond) * settings.cfg
        return blend(init, denoised, nmask ** (sigma[0].item() ** 1.0 * 0.5))

    final = _euler_a_img2img(k, denoiser, cfg, init, settings.steps, 0.75, settings.seed)  # left unblended
    with torch.no_grad():
        theirs = _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))
    assert ((nmask > 0) & (nmask < 1)).sum() >= 4  # a grey edge, not rounded
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()


@pytest.mark.parametrize("steps,strength", [(20, 0.75), (20, 0.7), (10, 0.3), (30, 0.999), (20, 1.0), (7, 0.05)])
def test_img2img_step_plans_are_a1111s(tiny_model, steps, strength):
    """Through diffusers' own get_timesteps: img2img runs the last int(strength x steps) + 1 of `steps` sigmas;
    the hires fix and "img2img fix steps" run exactly `steps`, the last of int(steps / strength)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    k_sampler = get_sampler("DPM++ 2M Karras").make(dict(_tiny_config(tiny_model)))
    ddim = get_sampler("DDIM").make(dict(_tiny_config(tiny_model)))
    # (scheduler, hires, fixed): A1111's img2img, its hires redraw, its "img2img fix steps" (any sampler)
    for scheduler, hires, fixed in ((k_sampler, False, False), (k_sampler, True, False), (k_sampler, False, True),
                                    (ddim, False, True)):
        call = img2img_steps(scheduler, steps, strength, hires=hires, fixed=fixed)
        scheduler.set_timesteps(call["num_inference_steps"])
        plan, count = StableDiffusionImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=scheduler),
                                                                   call["num_inference_steps"], call["strength"], "cpu")
        capped = min(strength, 0.999)
        total, t_enc = (int(steps / capped), steps - 1) if hires or fixed else (steps, int(capped * steps))
        assert call["num_inference_steps"] == total
        assert count == t_enc + 1 and torch.equal(plan, scheduler.timesteps[total - t_enc - 1:])
    # diffusers' DDIM otherwise keeps diffusers' reading: int(strength x steps)
    assert img2img_steps(ddim, steps, strength) == {"num_inference_steps": steps, "strength": strength}


def _tiny_config(tiny_model) -> dict:
    import json

    return json.loads((tiny_model[0] / "scheduler" / "scheduler_config.json").read_text())


# ---------------------------------------------------------------- the schedules


@pytest.mark.parametrize("schedule", ["Uniform", "Karras", "Exponential", "Polyexponential"])
@pytest.mark.parametrize("discard", [False, True])
def test_schedules_are_k_diffusions_to_the_bit(k, tiny_model, tiny_session, schedule, discard):
    ours = schedule_sigmas(schedule, 12, ModelSigmas(_tiny_config(tiny_model)), discard_penultimate=discard)
    theirs = _k_sigmas(k, _denoiser(k, tiny_session.pipe), schedule, 12, discard)
    assert len(ours) == 13 and torch.equal(ours, theirs)


@pytest.mark.parametrize("name", ["DPM++ 2M Karras", "Euler", "DPM++ SDE"])
def test_quantized_timesteps_are_k_diffusions_and_comfyuis(k, tiny_model, tiny_session, name):
    """A1111's "Enable quantization in K samplers" (k-diffusion's quantize=True): the UNet is given the nearest
    whole training step, as ComfyUI's ModelSamplingDiscrete.timestep always does."""
    settings = _settings(tiny_model[0], sampler=name, quantize=True)
    ours, theirs = _personae(tiny_session, settings), _reference(k, tiny_session, settings)
    off = (ours - theirs).abs().max().item()
    assert off <= 2e-5 * theirs.abs().max().item()
    fractional = _personae(tiny_session, settings.model_copy(update={"quantize": False}))
    assert (fractional - theirs).abs().max().item() > 20 * off  # the whole steps are what agrees


def test_a1111s_schedule_parameters_reach_the_sigmas_as_k_diffusions(k, tiny_model, tiny_session, tmp_path):
    """A1111's "Schedule rho", "Schedule min sigma", "Schedule max sigma" and "Discard penultimate sigma": the
    Karras sigmas k-diffusion gives for them, to the bit; written when set and read back."""
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    settings = _settings(tiny_model[0], sampler="DPM++ 2M Karras", schedule_rho=5.0, schedule_min_sigma=0.1,
                         schedule_max_sigma=10.0, discard_penultimate=True)
    scheduler = get_sampler(settings.sampler).make(_tiny_config(tiny_model), k_tuning(settings))
    scheduler.set_timesteps(8)
    theirs = k.sampling.get_sigmas_karras(9, 0.1, 10.0, rho=5.0)
    assert torch.equal(scheduler.sigmas, torch.cat([theirs[:-2], theirs[-1:]]))
    out = txt2img(settings.model_copy(update={"steps": 3}), tiny_session)[0]
    params = parse_parameters(out.parameters)[2]
    assert (params["Schedule rho"], params["Schedule min sigma"], params["Schedule max sigma"],
            params["Discard penultimate sigma"]) == ("5", "0.1", "10", "True")
    save_png(out.image, tmp_path / "p.png", out.parameters)
    again = settings_from_png(tmp_path / "p.png")
    assert (again["schedule_rho"], again["schedule_min_sigma"], again["schedule_max_sigma"],
            again["discard_penultimate"]) == (5.0, 0.1, 10.0, True)
    plain = txt2img(_settings(tiny_model[0], steps=3), tiny_session)[0]
    assert not {"Schedule rho", "Discard penultimate sigma"} & set(parse_parameters(plain.parameters)[2])


def test_the_unets_timesteps_are_k_diffusions_fractional_steps(k, tiny_model, tiny_session):
    scheduler = get_sampler("DPM++ 2M Karras").make(_tiny_config(tiny_model))
    scheduler.set_timesteps(10)
    theirs = _denoiser(k, tiny_session.pipe).sigma_to_t(scheduler.sigmas[:-1])
    assert torch.allclose(scheduler.timesteps, theirs, atol=1e-3)
    assert (scheduler.timesteps != scheduler.timesteps.round()).sum() >= 8  # not rounded to whole steps


def test_a1111s_other_schedule_types(tiny_model):
    m = ModelSigmas(_tiny_config(tiny_model))
    uniform = schedule_sigmas("Uniform", 10, m)
    for name in SCHEDULES:
        sigmas = schedule_sigmas(name, 10, m)
        assert len(sigmas) == 11 and bool((sigmas[:-1] >= sigmas[1:]).all()), name  # n + 1, falling
        assert sigmas[0] == pytest.approx(m.sigma_max, rel=1e-3) or name in ("Align Your Steps", "DDIM"), name
        assert (sigmas[-1] == 0) != (name == "KL Optimal"), name  # KL Optimal stops at the lowest sigma
    assert torch.allclose(schedule_sigmas("Normal", 10, m), uniform, rtol=1e-5)  # SD's range is all of it
    # Align Your Steps: NVIDIA's published list of 11 sigmas is 11 steps (A1111 appends the 0); others interpolate
    assert schedule_sigmas("Align Your Steps", 11, m).tolist() == pytest.approx(AYS[False] + [0.0], rel=1e-6)
    # Simple and DDIM pick training sigmas (DDIM's from step 1 by 1000 // n: its first is below the highest)
    assert set(schedule_sigmas("Simple", 10, m)[:-1].tolist()) <= set(m.sigmas.tolist())
    assert set(schedule_sigmas("DDIM", 10, m)[:-1].tolist()) <= set(m.sigmas.tolist())
    # SGM Uniform leaves out the last of n + 1 evenly spaced steps
    assert schedule_sigmas("SGM Uniform", 10, m)[-2] > uniform[-2]


# ---------------------------------------------------------------- names, as A1111 writes and reads them


def test_names_and_schedule_types():
    assert get_sampler("DPM++ 2M Karras").options == {"sampler": "DPM++ 2M", "schedule": "Karras"}
    assert get_sampler("DPM++ 2M").options["schedule"] == "Uniform"  # before A1111 1.9, a bare name
    assert get_sampler("DPM++ 2M Automatic").name == "DPM++ 2M Karras"  # A1111 1.9+'s choice
    assert get_sampler("DPM++ 2M SDE Automatic").name == "DPM++ 2M SDE Exponential"
    assert get_sampler("DPM2 a automatic").name == "DPM2 a Karras"
    assert get_sampler("Euler a Automatic").name == "Euler a"
    assert get_sampler("DPM++ 2M Uniform").name == "DPM++ 2M"
    assert get_sampler("Euler SGM Uniform").options["schedule"] == "SGM Uniform"
    assert get_sampler("DPM++ 2M SDE Heun Karras").options == {"sampler": "DPM++ 2M SDE Heun", "schedule": "Karras"}
    assert get_sampler("dpmpp_2m_sde_heun karras").name == "DPM++ 2M SDE Heun Karras"
    assert get_sampler("euler simple").name == "Euler Simple"  # ComfyUI's scheduler names
    assert get_sampler("euler ddim_uniform").name == "Euler DDIM"
    assert with_schedule_type("DPM++ 2M", "Karras") == "DPM++ 2M Karras"
    assert with_schedule_type("DPM++ 2M", "Align Your Steps") == "DPM++ 2M Align Your Steps"
    assert with_schedule_type("DDIM", "Align Your Steps") is None  # diffusers' DDIM has no such option
    assert with_schedule_type("UniPC", "Karras") == "UniPC Karras"


def test_the_infotext_names_the_uniform_schedule_where_a1111_would_read_another(tiny_model, tiny_session, tmp_path):
    """A1111 1.9+ reads a bare "DPM++ 2M" as its Automatic schedule (Karras): a picture drawn on the Uniform one says
    "Schedule type: Uniform"; both read back as drawn."""
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    for name, said in [("DPM++ 2M", "Uniform"), ("DPM++ 2M Karras", None), ("Euler a", None), ("DPM2", "Uniform"),
                       ("DPM++ 2M SDE Exponential", None)]:
        out = txt2img(_settings(tiny_model[0], sampler=name, steps=2), tiny_session)[0]
        params = parse_parameters(out.parameters)[2]
        assert (params["Sampler"], params.get("Schedule type")) == (name, said)
        save_png(out.image, tmp_path / "p.png", out.parameters)
        assert settings_from_png(tmp_path / "p.png")["sampler"] == name


def test_prompt_editing_counts_a_second_order_samplers_calls(tiny_model, tiny_session):
    """A1111 counts prompt editing in denoiser calls and schedules it over 2 x steps for its second-order samplers:
    with Heun's 4 steps (7 calls), "[cat:dog:0.5]" is the cat for calls 0-4 and the dog for the last 2 (over 4
    steps it would switch after call 2)."""
    from personae.inference.txt2img import txt2img

    seen = []
    hook = tiny_session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"][1:]), with_kwargs=True)
    try:
        txt2img(_settings(tiny_model[0], prompt="[a photo of a cat:a photo of a dog:0.5]", negative="", steps=4,
                          sampler="Heun"), tiny_session)
    finally:
        hook.remove()
    cat = tiny_session.encoder.encode("a photo of a cat").embeds
    assert len(seen) == 7
    assert [torch.equal(e, cat) for e in seen] == [True] * 5 + [False] * 2


def test_a1111_schedule_types_are_read_with_their_samplers(tmp_path):
    """A1111 1.9+ writes the schedule beside the sampler, and a hires schedule of its own only when it differs."""
    from personae.jobs.generate import settings_from_infotext

    head = "a cat\nSteps: 20, CFG scale: 7, Seed: 5, Size: 512x512, Hires upscale: 2, Denoising strength: 0.5, "
    read = settings_from_infotext(head + "Sampler: DPM++ 2M, Schedule type: Karras, Hires schedule type: Exponential",
                          tmp_path)
    assert (read["sampler"], read["hires_sampler"]) == ("DPM++ 2M Karras", "DPM++ 2M Exponential")
    read = settings_from_infotext(head + "Sampler: DPM++ 2M SDE, Schedule type: Automatic, Hires sampler: Euler a, "
                                 "Hires schedule type: Align Your Steps", tmp_path)
    assert (read["sampler"], read["hires_sampler"]) == ("DPM++ 2M SDE Exponential", "Euler a Align Your Steps")
    assert "hires_sampler" not in settings_from_infotext(head + "Sampler: Euler a", tmp_path)


def test_the_beta_schedules_parameters_are_said_only_when_not_a1111s_default(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from personae.jobs.generate import png_not_applied, settings_from_png

    def notes(alpha: str) -> list[str]:
        info = PngInfo()
        info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Schedule type: Beta, Beta schedule alpha: "
                                    f"{alpha}, Beta schedule beta: 0.6, CFG scale: 7, Seed: 1, Size: 64x64")
        Image.new("RGB", (8, 8)).save(tmp_path / "beta.png", pnginfo=info)
        data = settings_from_png(tmp_path / "beta.png")
        assert data["sampler"] == "Euler Beta"
        return png_not_applied(tmp_path / "beta.png", GenerateSettings(model="m", **data))

    assert notes("0.6") == []
    assert notes("0.5") == ['Beta schedule alpha "0.5"']


def test_a1111s_emphasis_modes(tiny_model, tiny_session, tmp_path):
    """A1111's "Emphasis": Original scales the weighted words and restores the chunk's mean; No norm only scales;
    None ignores the weights. Written when not Original, read back; a mode personae lacks is said."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from personae.cli.main import main
    from personae.inference.session import open_session
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import png_not_applied, settings_from_png
    from personae.media.png import parse_parameters, save_png

    # the world's text encoder (the tiny one's output mean is ~0, where A1111's rescale says nothing)
    assert main(["model", "world", str(tmp_path / "world")]) == 0
    encoder = open_session(str(tmp_path / "world"), device="cpu").encoder
    plain = encoder.encode("a red circle on a blue background").embeds
    weighted = {mode: encoder.encode("a red (circle:1.5) on a blue background", emphasis=mode).embeds
                for mode in ("Original", "No norm", "None")}
    assert torch.equal(weighted["None"], plain)
    assert not torch.allclose(weighted["No norm"], weighted["Original"])
    assert torch.allclose(weighted["Original"].mean(), plain.mean(), atol=1e-5)  # the mean restored
    assert not torch.allclose(weighted["No norm"].mean(), plain.mean(), atol=1e-5)
    out = txt2img(_settings(tiny_model[0], prompt="a photo of a (cat:1.5)", steps=2, emphasis="No norm"),
                  tiny_session)[0]
    assert parse_parameters(out.parameters)[2]["Emphasis"] == "No norm"
    save_png(out.image, tmp_path / "p.png", out.parameters)
    assert settings_from_png(tmp_path / "p.png")["emphasis"] == "No norm"
    original = txt2img(_settings(tiny_model[0], prompt="a photo of a (cat:1.5)", steps=2), tiny_session)[0]
    assert "Emphasis" not in parse_parameters(original.parameters)[2]
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64, Emphasis: Something new")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", pnginfo=info)
    data = settings_from_png(tmp_path / "a.png")
    assert "emphasis" not in data
    assert png_not_applied(tmp_path / "a.png", GenerateSettings(model="m", **data)) == ['Emphasis "Something new"']


def test_sde_noise_is_a_brownian_tree_per_image_seed(tiny_model, tiny_session):
    """Each image's SDE noise comes from its own seed's tree, so it does not depend on the batch it is drawn in
    (A1111's "batch determinism"); the GPU sources draw it too, the same each time."""
    from personae.inference.txt2img import txt2img

    one = _settings(tiny_model[0], sampler="DPM++ 2M SDE Karras", seed=12)
    batch = one.model_copy(update={"seed": 11, "batch_size": 2})
    alone = np.asarray(txt2img(one, tiny_session)[0].image, dtype=np.int16)
    second = np.asarray(txt2img(batch, tiny_session)[1].image, dtype=np.int16)
    assert np.abs(alone - second).max() <= 1
    gpu = np.asarray(txt2img(one.model_copy(update={"rng": "GPU"}), tiny_session)[0].image, dtype=np.int16)
    again = np.asarray(txt2img(one.model_copy(update={"rng": "GPU"}), tiny_session)[0].image, dtype=np.int16)
    assert np.array_equal(gpu, again)


def test_v_prediction_models_denoise_as_k_diffusions_v_wrapper(k, tiny_model, tiny_session):
    """A v-prediction model (SD 2.x 768, zero-SNR models): the UNet's output read as k-diffusion's CompVisVDenoiser
    reads it (the tiny UNet's output taken as v)."""
    pipe = tiny_session.pipe
    config = {**dict(pipe.scheduler.config), "prediction_type": "v_prediction"}
    scheduler = get_sampler("DPM++ 2M Karras").make(config)
    cond, uncond = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ours = _decoder_input(pipe, lambda: pipe.__class__(**{**pipe.components, "scheduler": scheduler})(
            prompt_embeds=cond, negative_prompt_embeds=uncond, latents=start, num_inference_steps=6,
            guidance_scale=5.0, height=64, width=64))
        denoiser = k.external.CompVisVDenoiser(_CompVisModel(pipe))
        sigmas = k.sampling.get_sigmas_karras(6, denoiser.sigmas[0].item(), denoiser.sigmas[-1].item())

        def cfg(x, sigma, **_):
            d_cond, d_uncond = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                        cond=torch.cat([cond, uncond])).chunk(2)
            return d_uncond + (d_cond - d_uncond) * 5.0

        final = k.sampling.sample_dpmpp_2m(cfg, start * sigmas[0], sigmas, disable=True)
        theirs = _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()


def test_a_zero_terminal_snr_v_prediction_model_samples_as_a1111s_zero_terminal_snr_schedule():
    """A1111's "Zero Terminal SNR" schedule: alphabar rescaled to end at 0 (as diffusers' rescale_betas_zero_snr
    rescales the betas), its last value then A1111's 4.8973451890853435e-08, a finite largest sigma."""
    from diffusers import DDPMScheduler

    config = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    m = ModelSigmas(config)
    diffusers_abar = DDPMScheduler(**config).alphas_cumprod
    assert torch.allclose(m.sigmas[:-1], ((1 - diffusers_abar[:-1]) / diffusers_abar[:-1]) ** 0.5, rtol=1e-3)
    assert m.sigma_max == pytest.approx((1 / 4.8973451890853435e-08 - 1) ** 0.5, rel=1e-5)  # 4,519
    scheduler = get_sampler("Euler").make(config)
    scheduler.set_timesteps(10)
    assert scheduler.init_noise_sigma == pytest.approx(m.sigma_max) and torch.isfinite(scheduler.timesteps).all()


def test_scheduler_config_round_trips():
    scheduler = KDiffusionScheduler(sampler="DPM++ SDE", schedule="Karras")
    again = KDiffusionScheduler.from_config(scheduler.config)
    again.set_timesteps(5)
    assert again.config.sampler == "DPM++ SDE" and again.order == 2 and len(again.timesteps) == 9


@pytest.mark.parametrize("name,options", [("Euler a", {"ngms": 3.0}),
                                          ("DPM++ 2M Karras", {"ngms": 3.0, "ngms_all_steps": True}),
                                          ("Heun", {"skip_early_cfg": 0.3}), ("DPM++ SDE", {"ngms": 1.5})])
def test_ngms_and_skip_early_cfg_leave_the_negative_prompt_out_as_a1111s_cfg_denoiser(k, tiny_model, tiny_session,
                                                                                       name, options):
    """A1111's NGMS: every other model call (odd ones; every one with "NGMS all steps") whose sigma is below it runs
    the prompt alone; Skip Early CFG: calls with call / (steps x order) <= it. The UNet runs on the prompt's rows
    only on those calls."""
    from personae.media.png import parse_parameters

    settings = _settings(tiny_model[0], sampler=name, steps=8, **options)
    sampler = get_sampler(settings.sampler)
    kind = KSAMPLERS[sampler.options["sampler"]]
    pipe = tiny_session.pipe
    sigmas = _k_sigmas(k, _denoiser(k, pipe), sampler.options["schedule"], settings.steps, kind.discard_penultimate)
    total = settings.steps * (2 if kind.two_stage else 1)

    def skip(call, sigma):
        if settings.skip_early_cfg and call / total <= settings.skip_early_cfg:
            return True
        return bool((call % 2 or settings.ngms_all_steps) and settings.ngms > 0 and sigma < settings.ngms)

    stream = torch.Generator().manual_seed(settings.seed)
    x = torch.randn(SHAPE, generator=stream) * sigmas[0]
    final = _k_run(k, pipe, settings, sigmas, x, stream, skip)
    with torch.no_grad():
        theirs = _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))
    rows = []
    hook = pipe.unet.conv_in.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        ours = _personae(tiny_session, settings)
    finally:
        hook.remove()
    plain = _personae(tiny_session, settings.model_copy(update={"ngms": 0.0, "skip_early_cfg": 0.0}))
    assert 1 in rows and 2 in rows  # some calls ran the prompt alone
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()
    assert (plain - theirs).abs().max().item() > 2e-4 * theirs.abs().max().item()  # 10x the agreement
    from personae.inference.txt2img import txt2img

    said = parse_parameters(txt2img(settings, tiny_session)[0].parameters)[2]
    assert {key: said.get(key) for key in ("NGMS", "NGMS all steps", "Skip Early CFG")} == {
        "NGMS": f"{settings.ngms:g}" if settings.ngms else None,
        "NGMS all steps": "True" if settings.ngms_all_steps else None,
        "Skip Early CFG": f"{settings.skip_early_cfg:g}" if settings.skip_early_cfg else None}


def test_ngms_with_ddim_reads_the_timestep_and_with_and_the_first_part_stands_in(tiny_model, tiny_session):
    """DDIM is one of A1111's timestep samplers, which hand the timestep to the CFG denoiser as its sigma: NGMS 15
    skips the odd calls below timestep 15 (the last one here). With AND, a skipped call uses the first part for the
    negative prompt: "a cat AND a cat" with every call skipped is "a cat" alone (cond_1 + cfg x (cond_2 - cond_1))."""
    seen = []
    hooks = [tiny_session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kw: seen.append(["t", float(kw.get("timestep", args[1] if len(args) > 1 else 0))]),
        with_kwargs=True),
        tiny_session.pipe.unet.conv_in.register_forward_pre_hook(
            lambda module, args: seen[-1].append(args[0].shape[0]))]
    try:
        _personae(tiny_session, _settings(tiny_model[0], sampler="DDIM", steps=8, ngms=15.0))
    finally:
        for hook in hooks:
            hook.remove()
    assert [rows == 1 for _, t, rows in seen] == [bool(i % 2 and t < 15) for i, (_, t, _) in enumerate(seen)]
    assert any(rows == 1 for _, _, rows in seen)
    every = {"skip_early_cfg": 1.0, "sampler": "Euler"}
    twice = _personae(tiny_session, _settings(tiny_model[0], prompt="a photo of a cat AND a photo of a cat", **every))
    once = _personae(tiny_session, _settings(tiny_model[0], **every))
    guided = _personae(tiny_session, _settings(tiny_model[0], prompt="a photo of a cat AND a photo of a cat",
                                               sampler="Euler"))
    assert (twice - once).abs().max() <= 1e-4 * once.abs().max()
    assert (guided - once).abs().max() > 1e-2 * once.abs().max()


class _TorchHijack:
    """A1111's TorchHijack: k-diffusion's torch.randn_like draws the image's next numbers."""

    def __init__(self, stream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self.stream)


@pytest.mark.parametrize("name,options,img2img", [
    ("Euler", {"sigma_churn": 2.0}, False), ("Heun", {"sigma_churn": 1.0, "sigma_tmin": 0.5, "sigma_tmax": 5.0}, False),
    ("DPM2", {"sigma_churn": 3.0, "sigma_noise": 0.9}, False), ("DPM++ 2S a", {"sigma_noise": 0.8}, False),
    ("Euler a", {"sigma_noise": 0.5}, False), ("Euler", {"sigma_churn": 2.0}, True)])
def test_sigma_churn_tmin_tmax_and_noise_are_k_diffusions(k, tiny_model, tiny_session, photo, name, options, img2img):
    """A1111's sampler parameters: Sigma churn / tmin / tmax / noise reach Euler, Heun and DPM2 (k-diffusion's
    S_churn: eps drawn from the image's numbers at every step, A1111's TorchHijack), Sigma noise the noisy samplers
    A1111 gives it to, not Euler a; in img2img the churn divides by the steps run. Written when not the default for a
    sampler that takes them, and read back."""
    from PIL import Image

    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    settings = _settings(tiny_model[0], sampler=name, steps=8, **options,
                         **({"init_image": str(photo), "strength": 0.6} if img2img else {}))
    sampler = get_sampler(settings.sampler)
    kind = KSAMPLERS[sampler.options["sampler"]]
    pipe = tiny_session.pipe
    sigmas = _k_sigmas(k, _denoiser(k, pipe), sampler.options["schedule"], settings.steps, kind.discard_penultimate)
    parameters = {}
    if kind.churns:
        parameters = {"s_churn": settings.sigma_churn, "s_tmin": settings.sigma_tmin,
                      "s_tmax": settings.sigma_tmax or float("inf")}
    if kind.takes_s_noise:
        parameters["s_noise"] = settings.sigma_noise
    stream = torch.Generator().manual_seed(settings.seed)
    if img2img:
        sigmas = sigmas[settings.steps - int(0.6 * settings.steps) - 1:]
        with torch.no_grad():
            image = pipe.image_processor.preprocess(Image.open(photo).convert("RGB"), height=64, width=64)
            encoded = pipe.vae.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(settings.seed))
        x = encoded * pipe.vae.config.scaling_factor + torch.randn(SHAPE, generator=stream) * sigmas[0]
    else:
        x = torch.randn(SHAPE, generator=stream) * sigmas[0]
    original = k.sampling.torch
    k.sampling.torch = _TorchHijack(stream)
    try:
        final = _k_run(k, pipe, settings, sigmas, x, stream, **parameters)
    finally:
        k.sampling.torch = original
    with torch.no_grad():
        theirs = _decoder_input(pipe, lambda: pipe.vae.decode(final / pipe.vae.config.scaling_factor))
    ours = _personae(tiny_session, settings)
    plain = _personae(tiny_session, settings.model_copy(update={"sigma_churn": 0.0, "sigma_noise": 1.0}))
    assert (ours - theirs).abs().max().item() <= 2e-5 * theirs.abs().max().item()
    said = parse_parameters(txt2img(settings, tiny_session)[0].parameters)[2]
    if name == "Euler a":  # A1111 does not give Euler a its Sigma noise: nothing changes, nothing is written
        assert torch.equal(ours, plain) and "Sigma noise" not in said
        return
    assert (plain - theirs).abs().max().item() > 2e-4 * theirs.abs().max().item()
    keys = {"sigma_churn": "Sigma churn", "sigma_tmin": "Sigma tmin", "sigma_tmax": "Sigma tmax",
            "sigma_noise": "Sigma noise"}
    assert {key: said[key] for key in said if key.startswith("Sigma")} == {
        keys[field]: f"{value:g}" for field, value in options.items()}
    png = tiny_model[0].parent / f"churn-{name.replace(' ', '_')}-{img2img}.png"
    save_png(Image.new("RGB", (8, 8)), png, txt2img(settings, tiny_session)[0].parameters.replace("personae", "v1"))
    assert {field: settings_from_png(png)[field] for field in options} == options


def test_the_zero_terminal_snr_noise_schedule_samples_a_model_whose_config_lacks_it(tmp_path):
    """A1111's "Noise schedule for sampling: Zero Terminal SNR" (infotext "Noise Schedule"): the shipped zero-SNR
    world model with rescale_betas_zero_snr taken out of its scheduler config draws, with the option, exactly what
    the model draws with its own config; without it something else; the PNG says so and --from-png redraws it. A
    sampler whose scheduler cannot rescale (PLMS) is refused."""
    import json

    from PIL import Image

    from personae.errors import UserError
    from personae.jobs.generate import run_generate, settings_from_png
    from personae.media.png import parse_parameters, read_png_text
    from personae.world.model import write_world_zero_snr

    model = write_world_zero_snr(tmp_path / "zsnr")
    bare = tmp_path / "bare"
    import shutil

    shutil.copytree(model, bare)
    config_file = bare / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    assert config.pop("rescale_betas_zero_snr") is True
    config_file.write_text(json.dumps(config))
    base = GenerateSettings(model=str(model), prompt="a red circle on a blue background, close-up", seed=1, steps=8,
                            sampler="Euler")
    own = run_generate(base, tmp_path / "own")[0]
    told = run_generate(base.model_copy(update={"model": str(bare), "noise_schedule": "Zero Terminal SNR"}),
                        tmp_path / "told")[0]
    plain = run_generate(base.model_copy(update={"model": str(bare)}), tmp_path / "plain")[0]
    pixels = [np.asarray(Image.open(p), np.int16) for p in (own, told, plain)]
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    # the schedules themselves: without the option the bare config starts at its own largest sigma (about 14.6),
    # with it at A1111's zero-SNR one (about 4,519)
    starts = []
    for option in ("Default", "Zero Terminal SNR"):
        scheduler = get_sampler("Euler").make(config, k_tuning(base.model_copy(update={"noise_schedule": option})))
        scheduler.set_timesteps(8)
        starts.append(float(scheduler.init_noise_sigma))
    assert starts[0] < 20 and starts[1] == pytest.approx((1 / 4.8973451890853435e-08 - 1) ** 0.5, rel=1e-4)
    said = parse_parameters(read_png_text(told)["parameters"])[2]
    assert said.get("Noise Schedule") == "Zero Terminal SNR" and "Noise Schedule" not in parse_parameters(
        read_png_text(plain)["parameters"])[2]
    again = run_generate(GenerateSettings(**settings_from_png(told)), tmp_path / "again")[0]
    assert np.array_equal(np.asarray(Image.open(again)), pixels[1].astype(np.uint8))
    with pytest.raises(UserError, match="PLMS cannot sample on the Zero Terminal SNR"):
        run_generate(base.model_copy(update={"model": str(bare), "noise_schedule": "Zero Terminal SNR",
                                             "sampler": "PLMS"}), tmp_path / "plms")
