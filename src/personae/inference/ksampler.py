"""A1111's and ComfyUI's samplers as they run there: k-diffusion's algorithms, as a diffusers scheduler.

Both tools sample with Katherine Crowson's k-diffusion on noise levels taken from the model's own training schedule
(inference/sigmas.py). diffusers' schedulers of the same names differ in ways that change the picture: DPM++ 2M
rounds its timesteps to whole steps and starts from noise x sqrt(1 + sigma^2) instead of x sigma, the default
schedules are spaced another way, DPM2 keeps the next-to-last sigma A1111 drops, and DPM++ 2S a and DPM++ SDE have
no counterpart at all. This scheduler does what k-diffusion's sample_* functions do, step by step, inside any
diffusers pipeline (txt2img, img2img, inpainting, ControlNet, AnimateDiff, SDXL): the pipeline calls the UNet, this
turns its output into the denoised estimate as k-diffusion's CompVis wrappers do and takes the step.

Second-order samplers (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE) call the model twice per step, as diffusers' Heun
does: `timesteps` holds one entry per model call (2n - 1 of them; the last step is a single Euler step) and `order`
is 2. The UNet's timestep is the fractional training step of each call's sigma.

Random numbers: the ancestral samplers' noise comes from the image's generator (`randn_tensor`, routed to A1111's
RNG sources by inference/rng.py); the SDE samplers' from a Brownian tree per image seeded with the image's seed
(torchsde, as k-diffusion's BrownianTreeNoiseSampler, which A1111 and ComfyUI use).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from personae.inference.sigmas import SCHEDULES, ModelSigmas, schedule_sigmas


@dataclass(frozen=True)
class KSampler:
    function: str  # k-diffusion's sample_<function>
    schedule: str = "Uniform"  # the schedule A1111 1.9+ picks for "Automatic"
    discard_penultimate: bool = False
    two_stage: bool = False  # two model calls per step

    @property
    def noisy(self) -> bool:
        """Adds fresh noise at each step (A1111's "Eta" applies)."""
        return "ancestral" in self.function or "sde" in self.function

    @property
    def churns(self) -> bool:
        """Takes A1111's "Sigma churn", "Sigma tmin" and "Sigma tmax" (Karras et al.'s S_churn: noise added before
        each step's first call)."""
        return self.function in ("euler", "heun", "dpm_2")

    @property
    def takes_s_noise(self) -> bool:
        """Takes A1111's "Sigma noise" (its sampler_extra_params; Euler a and LMS keep k-diffusion's 1)."""
        return self.function not in ("euler_ancestral", "lms", "dpmpp_2m")


# A1111 1.10's samplers_k_diffusion: function, its "Automatic" schedule, and whether the next-to-last sigma goes
KSAMPLERS = {
    "Euler": KSampler("euler"), "Euler a": KSampler("euler_ancestral"), "LMS": KSampler("lms"),
    "Heun": KSampler("heun", two_stage=True),
    "DPM2": KSampler("dpm_2", "Karras", discard_penultimate=True, two_stage=True),
    "DPM2 a": KSampler("dpm_2_ancestral", "Karras", discard_penultimate=True, two_stage=True),
    "DPM++ 2S a": KSampler("dpmpp_2s_ancestral", "Karras", two_stage=True),
    "DPM++ 2M": KSampler("dpmpp_2m", "Karras"),
    "DPM++ SDE": KSampler("dpmpp_sde", "Karras", two_stage=True),
    "DPM++ 2M SDE": KSampler("dpmpp_2m_sde", "Exponential"),
    "DPM++ 2M SDE Heun": KSampler("dpmpp_2m_sde_heun", "Exponential"),
    "DPM++ 3M SDE": KSampler("dpmpp_3m_sde", "Exponential", discard_penultimate=True),
}
BROWNIAN = {"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}


def _t(sigma):  # k-diffusion's t_fn and sigma_fn
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def ancestral_step(sigma_from, sigma_to, eta: float):
    """k-diffusion's get_ancestral_step: the sigma to step down to and the noise to add."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    from scipy import integrate

    def basis(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod
    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


class KDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """k-diffusion's sampler `sampler` (an A1111 name, KSAMPLERS) on A1111's schedule `schedule` ("Automatic": the
    sampler's own), built on the model's scheduler config like any diffusers scheduler."""

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", trained_betas=None, prediction_type: str = "epsilon",
                 rescale_betas_zero_snr: bool = False, sampler: str = "Euler", schedule: str = "Automatic",
                 eta: float = 1.0, s_noise: float = 1.0, sdxl: bool = False, quantize: bool = False,
                 rho: float = 0.0, sigma_min: float = 0.0, sigma_max: float = 0.0, discard_penultimate: bool = False,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = 0.0):
        self.kind = KSAMPLERS[sampler]
        self.schedule = self.kind.schedule if schedule == "Automatic" else schedule
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}")
        self.model = ModelSigmas(dict(self.config))
        self.order = 2 if self.kind.two_stage else 1
        self.timesteps = torch.zeros(0)
        self.num_inference_steps = None
        self._step_index = self._begin_index = None
        # A1111's inpainting with an ordinary (4-channel) model: (mask, nmask) at the latents' size, mask 1 where the
        # picture is kept; each denoised estimate is the encoded picture there, and so is the result (inpaint_like)
        self.inpaint: tuple[torch.Tensor, torch.Tensor] | None = None
        self._init_latent: torch.Tensor | None = None
        # A1111's Soft inpainting (inference/soft_inpaint.SoftInpainting): each estimate is soft.blend(picture,
        # estimate, nmask, sigma) instead, and the result is left unblended, kept as `drawn` for its overlay mask
        self.soft = None
        self.drawn: torch.Tensor | None = None
        # the encoded picture, for a pipeline that starts from noise alone (an inpainting model at strength 1)
        self.picture_latents: torch.Tensor | None = None
        # the images' generators, for the churn noise drawn before a step's first call (the pipeline hands them to
        # step() only after it); set by the caller when "Sigma churn" is on
        self.generators: list | None = None
        self.steps_run: int | None = None  # img2img: the last steps_run steps of the schedule (img2img_steps)
        self.s_noise = s_noise if self.kind.takes_s_noise else 1.0

    # --- the plan: one entry per model call --------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device=None):
        self.num_inference_steps = num_inference_steps
        c = self.config
        self.sigmas = schedule_sigmas(self.schedule, num_inference_steps, self.model, c.sdxl,
                                      self.kind.discard_penultimate or c.discard_penultimate, c.rho, c.sigma_min,
                                      c.sigma_max)
        steps = len(self.sigmas) - 1
        # k-diffusion's sigma_hat: each step's first call at sigma x (gamma + 1), gamma from "Sigma churn" where the
        # sigma is within [tmin, tmax] (tmax 0: no bound, A1111's); exactly sigma without churn
        top = c.s_tmax or float("inf")
        self._hats = [self.sigmas[i] * ((min(c.s_churn / (self.steps_run or steps), 2 ** 0.5 - 1)
                                         if self.kind.churns and c.s_churn and c.s_tmin <= self.sigmas[i] <= top
                                         else 0.0) + 1) for i in range(steps)]
        self._calls: list[tuple[int, int, torch.Tensor]] = []  # (step, stage, sigma the model sees)
        for i in range(steps):
            self._calls.append((i, 0, self._hats[i]))
            second = self._second_sigma(i) if self.kind.two_stage else None
            if second is not None:
                self._calls.append((i, 1, second))
        call_sigmas = torch.stack([s for _, _, s in self._calls])
        self.timesteps = self.model.sigma_to_t(call_sigmas, whole=self.config.quantize).to(device=device)
        self._state: dict = {}
        self._step_index = self._begin_index = None
        self._noise = None
        self._churned = None

    def _second_sigma(self, i: int):
        """The sigma of step i's second model call, or None when the step makes one (the last, to sigma 0)."""
        fn, now, nxt, eta = self.kind.function, self.sigmas[i], self.sigmas[i + 1], self.config.eta
        if fn == "heun":
            return None if nxt == 0 else nxt
        if fn == "dpm_2":
            return None if nxt == 0 else self._hats[i].log().lerp(nxt.log(), 0.5).exp()
        down, _ = ancestral_step(now, nxt, eta)
        if fn == "dpm_2_ancestral":
            return None if down == 0 else now.log().lerp(down.log(), 0.5).exp()
        if fn == "dpmpp_2s_ancestral":
            return None if down == 0 else _sigma(_t(now) + 0.5 * (_t(down) - _t(now)))
        if fn == "dpmpp_sde":
            return None if nxt == 0 else _sigma(_t(now) + (_t(nxt) - _t(now)) * 0.5)
        raise AssertionError(fn)

    @property
    def init_noise_sigma(self) -> float:
        return self.sigmas[0].item()  # A1111 and k-diffusion start from noise x sigma_max

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        self._begin_index = begin_index

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        found = ((self.timesteps if schedule_timesteps is None else schedule_timesteps) == timestep).nonzero()
        return found[1 if len(found) > 1 else 0].item()

    def _init_step_index(self, timestep):
        if self._begin_index is not None:
            self._step_index = self._begin_index
        else:
            timestep = timestep.to(self.timesteps.device) if torch.is_tensor(timestep) else timestep
            self._step_index = self.index_for_timestep(timestep)

    def _call_sigma(self):
        return self._calls[self._step_index][2]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        if self._step_index is None:
            self._init_step_index(timestep)
        i, stage, hat = self._calls[self._step_index]
        if stage == 0 and self.kind.churns and self.config.s_churn:
            sample = self._churn(sample, i, hat)
        c_in = 1 / (hat ** 2 + 1.0) ** 0.5
        return sample * c_in.to(sample.device, sample.dtype)

    def _churn(self, sample: torch.Tensor, i: int, hat) -> torch.Tensor:
        """k-diffusion's churn before step i's first call: eps drawn every step (A1111's generator moves on even
        where gamma is 0), x + eps x s_noise x sqrt(hat^2 - sigma^2) where it is not; `sample` is the pipeline's
        latents, repeated for guidance; step() goes on from the churned latents."""
        gens = self.generators
        if gens is None:
            raise RuntimeError("Sigma churn draws noise before the model call: set the scheduler's generators")
        n = len(gens) if isinstance(gens, list) else 1
        if self._churned is None or self._churned[0] != self._step_index:  # a second scale for the same call (a
            x = sample[:n].float()  # ControlNet's input in guess mode) reuses the draw
            eps = randn_tensor(x.shape, generator=gens, device=x.device, dtype=x.dtype) * self.s_noise
            sigma = self.sigmas[i]
            if hat > sigma:
                x = x + eps * (hat ** 2 - sigma ** 2) ** 0.5
            self._churned = (self._step_index, x)
        x = self._churned[1]
        return x.to(sample.dtype).repeat(sample.shape[0] // x.shape[0], *[1] * (x.dim() - 1))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """img2img's start, as A1111's: the encoded picture + noise x the first sigma of the run."""
        if self._begin_index is None:
            index = self.index_for_timestep(timesteps.reshape(-1)[0].to(self.timesteps.device))
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
        sigma = self.sigmas[self._calls[index][0]].to(original_samples.device, original_samples.dtype)  # not churned
        if self.inpaint is not None and self._init_latent is None:  # the pipeline's first call: the encoded picture
            self._init_latent = original_samples.float()
        return original_samples + noise * sigma

    def __len__(self):
        return self.config.num_train_timesteps

    # --- one model call's step ---------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        if self._step_index is None:
            self._init_step_index(timestep)
        i, stage, sigma = self._calls[self._step_index]
        dtype = sample.dtype
        x, out = sample.float(), model_output.float()
        if stage == 0 and self._churned is not None:  # the latents the model saw: churned in scale_model_input
            x, self._churned = self._churned[1], None
        if self.model.v_prediction:  # CompVisVDenoiser
            c_skip, c_out = 1.0 / (sigma ** 2 + 1.0), -sigma / (sigma ** 2 + 1.0) ** 0.5
            denoised = out * c_out + x * c_skip
        else:  # CompVisDenoiser: x + eps x c_out, c_out = -sigma
            denoised = x + out * -sigma
        keep = self._inpaint_masks(x)
        if keep is not None and self.soft is not None:  # A1111's on_mask_blend, as Soft inpainting makes it
            denoised = self.soft.blend(self._init_latent, denoised, keep[1], sigma)
        elif keep is not None:  # A1111's CFGDenoiser: the kept part of every estimate is the picture
            denoised = self._init_latent * keep[0] + keep[1] * denoised
        self._generator = generator
        x = getattr(self, "_" + self.kind.function.replace("_heun", ""))(i, stage, x, denoised)
        self._step_index += 1
        if keep is not None and self._step_index == len(self._calls):  # and of the result (Soft inpainting: not)
            self.drawn = x
            if self.soft is None:
                x = x * keep[1] + self._init_latent * keep[0]
        x = x.to(dtype)
        return SchedulerOutput(prev_sample=x) if return_dict else (x,)

    @property
    def init_latent(self) -> torch.Tensor | None:
        """The encoded picture inpainting keeps (after "Masked content"), from the pipeline's first add_noise."""
        return self._init_latent

    def _inpaint_masks(self, x: torch.Tensor):
        if self.inpaint is None:
            return None
        if self._init_latent is None and self.picture_latents is not None:
            self._init_latent = self.picture_latents.float().to(x.device).repeat(x.shape[0], 1, 1, 1)
        if self._init_latent is None:
            raise RuntimeError("inpainting needs the encoded picture: the pipeline must start through add_noise")
        return tuple(m.to(x.device, x.dtype) for m in self.inpaint)

    def _randn(self, x: torch.Tensor) -> torch.Tensor:
        return randn_tensor(x.shape, generator=self._generator, device=x.device, dtype=x.dtype)

    def _brownian(self, x: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
        if self._noise is None:
            from personae.inference.brownian import BrownianNoise
            positive = self.sigmas[self.sigmas > 0]
            gens = self._generator if isinstance(self._generator, list) else [self._generator] * x.shape[0]
            seeds = [g.image_seed if hasattr(g, "image_seed") else g.initial_seed() if g is not None
                     else int(torch.randint(0, 2 ** 63 - 1, [])) for g in gens]
            self._noise = BrownianNoise(x, positive.min(), self.sigmas.max(), seeds, getattr(gens[0], "source", "CPU"))
        return self._noise(sigma, sigma_next)

    def _to_d(self, x, sigma, denoised):
        return (x - denoised) / sigma

    def _euler(self, i, stage, x, denoised):
        sigma, nxt = self._hats[i], self.sigmas[i + 1]
        return x + self._to_d(x, sigma, denoised) * (nxt - sigma)

    def _euler_ancestral(self, i, stage, x, denoised):
        sigma, nxt = self.sigmas[i], self.sigmas[i + 1]
        down, up = ancestral_step(sigma, nxt, self.config.eta)
        x = x + self._to_d(x, sigma, denoised) * (down - sigma)
        if nxt > 0:
            x = x + self._randn(x) * self.s_noise * up
        return x

    def _lms(self, i, stage, x, denoised, order: int = 4):
        ds = self._state.setdefault("ds", [])
        ds.append(self._to_d(x, self.sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        now = min(i + 1, order)
        t = self.sigmas.numpy()
        coeffs = [lms_coefficient(now, t, i, j) for j in range(now)]
        return x + sum(c * d for c, d in zip(coeffs, reversed(ds)))

    def _heun(self, i, stage, x, denoised):
        sigma, nxt = self._hats[i], self.sigmas[i + 1]
        if stage == 0:  # Euler to the next sigma: the answer on the last step, else the point of the second call
            d = self._to_d(x, sigma, denoised)
            self._state.update(x=x, d=d)
            return x + d * (nxt - sigma)
        d_2 = self._to_d(x, nxt, denoised)
        return self._state["x"] + (self._state["d"] + d_2) / 2 * (nxt - sigma)

    def _dpm_2(self, i, stage, x, denoised):
        sigma, nxt = self._hats[i], self.sigmas[i + 1]
        return self._midpoint(i, stage, x, denoised, sigma, nxt, 0.0)

    def _dpm_2_ancestral(self, i, stage, x, denoised):
        sigma, nxt = self.sigmas[i], self.sigmas[i + 1]
        down, up = ancestral_step(sigma, nxt, self.config.eta)
        return self._midpoint(i, stage, x, denoised, sigma, down, up)

    def _midpoint(self, i, stage, x, denoised, sigma, target, up):
        """DPM-Solver-2 from `sigma` to `target` (DPM2 and DPM2 a), then noise x `up` (DPM2 a)."""
        if stage == 0:
            d = self._to_d(x, sigma, denoised)
            if target == 0:
                return x + d * (target - sigma)
            mid = self._calls[self._step_index + 1][2]
            self._state.update(x=x)
            return x + d * (mid - sigma)
        mid = self._calls[self._step_index][2]
        x = self._state["x"] + self._to_d(x, mid, denoised) * (target - sigma)
        if up:
            x = x + self._randn(x) * self.s_noise * up
        return x

    def _dpmpp_2s_ancestral(self, i, stage, x, denoised):
        sigma, nxt = self.sigmas[i], self.sigmas[i + 1]
        down, up = ancestral_step(sigma, nxt, self.config.eta)
        if stage == 0 and down == 0:
            x = x + self._to_d(x, sigma, denoised) * (down - sigma)
        elif stage == 0:
            t, t_next = _t(sigma), _t(down)
            h = t_next - t
            self._state.update(x=x)
            return (_sigma(t + 0.5 * h) / _sigma(t)) * x - (-h * 0.5).expm1() * denoised
        else:
            t, t_next = _t(sigma), _t(down)
            x = (_sigma(t_next) / _sigma(t)) * self._state["x"] - (-(t_next - t)).expm1() * denoised
        if nxt > 0:
            x = x + self._randn(x) * self.s_noise * up
        return x

    def _dpmpp_sde(self, i, stage, x, denoised, r: float = 0.5):
        sigma, nxt, eta, s_noise = self.sigmas[i], self.sigmas[i + 1], self.config.eta, self.s_noise
        if nxt == 0:
            return x + self._to_d(x, sigma, denoised) * (nxt - sigma)
        t, t_next = _t(sigma), _t(nxt)
        h = t_next - t
        s = t + h * r
        if stage == 0:
            sd, su = ancestral_step(_sigma(t), _sigma(s), eta)
            s_ = _t(sd)
            x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
            self._state.update(x=x, denoised=denoised)
            return x_2 + self._brownian(x, _sigma(t), _sigma(s)) * s_noise * su
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = _t(sd)
        denoised_d = (1 - fac) * self._state["denoised"] + fac * denoised
        x = (_sigma(t_next_) / _sigma(t)) * self._state["x"] - (t - t_next_).expm1() * denoised_d
        return x + self._brownian(x, _sigma(t), _sigma(t_next)) * s_noise * su

    def _dpmpp_2m(self, i, stage, x, denoised):
        sigma, nxt = self.sigmas[i], self.sigmas[i + 1]
        t, t_next = _t(sigma), _t(nxt)
        h = t_next - t
        old = self._state.get("old")
        if old is None or nxt == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t(self.sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        self._state["old"] = denoised
        return x

    def _dpmpp_2m_sde(self, i, stage, x, denoised):
        sigma, nxt, eta = self.sigmas[i], self.sigmas[i + 1], self.config.eta
        old, h_last = self._state.get("old"), self._state.get("h_last")
        h = None
        if nxt == 0:
            x = denoised
        else:
            t, s = -sigma.log(), -nxt.log()
            h = s - t
            eta_h = eta * h
            x = nxt / sigma * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old is not None:
                r = h_last / h
                if self.kind.function.endswith("_heun"):
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old)
            if eta:
                x = x + self._brownian(x, sigma, nxt) * nxt * (-2 * eta_h).expm1().neg().sqrt() * self.s_noise
        self._state.update(old=denoised, h_last=h)
        return x

    def _dpmpp_3m_sde(self, i, stage, x, denoised):
        sigma, nxt, eta = self.sigmas[i], self.sigmas[i + 1], self.config.eta
        d_1, d_2, h_1, h_2 = (self._state.get(k) for k in ("d_1", "d_2", "h_1", "h_2"))
        h = None
        if nxt == 0:
            x = denoised
        else:
            h = -nxt.log() - -sigma.log()
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - d_1) / (h_1 / h))
            if eta:
                x = x + self._brownian(x, sigma, nxt) * nxt * (-2 * h * eta).expm1().neg().sqrt() * self.s_noise
        self._state.update(d_1=denoised, d_2=d_1, h_1=h, h_2=h_1)
        return x


def img2img_steps(scheduler, steps: int, strength: float, hires: bool = False, fixed: bool = False) -> dict:
    """The step count and strength to give a diffusers img2img pipeline so that it runs A1111's img2img steps (its
    setup_img2img_steps).

    A k-diffusion sampler, img2img and inpainting: the last int(strength x steps) + 1 of a schedule of `steps`
    (diffusers runs one fewer); its hires redraw (`hires`): exactly `steps`, the last of a schedule of
    int(steps / strength). `fixed` (A1111's "With img2img, do exactly the amount of steps the slider specifies",
    ComfyUI's denoise) runs that way with any sampler. Otherwise diffusers' reading stays. The pipeline starts at
    step N - int(N x strength'), so strength' is put half a step inside the wanted count."""
    k_diffusion = isinstance(scheduler, KDiffusionScheduler)
    if strength <= 0 or not (k_diffusion or fixed):
        return {"num_inference_steps": steps, "strength": strength}
    capped = min(strength, 0.999)
    if fixed or hires:
        total, run = int(steps / capped), steps
    else:
        total, run = steps, int(capped * steps) + 1
    if k_diffusion:
        scheduler.steps_run = run  # k-diffusion's churn divides by the steps of the schedule it is given
    return {"num_inference_steps": total, "strength": min(1.0, (run + 0.5) / total)}
