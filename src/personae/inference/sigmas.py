"""Noise levels as A1111 and ComfyUI sample them: k-diffusion's view of a model's training schedule, and A1111's
schedule types.

A model trained on T discrete steps has T noise levels sigma_t = sqrt((1 - alphabar_t) / alphabar_t). k-diffusion
samplers walk a list of sigmas; between two training steps a sigma is found by linear interpolation of log sigma,
and the UNet is given the fractional step t that gives back its sigma (A1111's "Enable quantization in K samplers"
off, its default). The schedule types below are A1111's (modules/sd_schedulers.py), each giving n + 1 sigmas for
n steps; all but KL Optimal end at 0. Arithmetic follows k-diffusion's order in float32, so the sigmas are its
sigmas to the last bit, not only to a tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from personae.errors import UserError


class ModelSigmas:
    """The model's training noise levels (ascending), from its scheduler config, as A1111's model holds them:
    betas in float64 (the original LDM code), alphabar kept in float32."""

    def __init__(self, config: dict):
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        kind = config.get("beta_schedule", "scaled_linear")
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], dtype=np.float64)
        elif kind == "scaled_linear":
            betas = (torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2).numpy()
        elif kind == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64).numpy()
        elif kind == "squaredcos_cap_v2":
            from diffusers.schedulers.scheduling_utils import betas_for_alpha_bar
            betas = betas_for_alpha_bar(n).double().numpy()
        else:
            raise UserError(f'The model\'s scheduler config has beta_schedule "{kind}", which the k-diffusion samplers '
                            "do not read.", "Use DDIM, PLMS or UniPC with this model.")
        alphas_cumprod = torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)
        if config.get("rescale_betas_zero_snr"):
            alphas_cumprod = zero_terminal_snr(alphas_cumprod)
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.v_prediction = config.get("prediction_type", "epsilon") == "v_prediction"

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor, whole: bool = False) -> torch.Tensor:
        """The fractional training step of each sigma (the UNet's timestep input); `whole`: the nearest whole step
        (A1111's "Enable quantization in K samplers", and how ComfyUI always samples)."""
        log_sigma = sigma.log()
        if whole:
            return (log_sigma - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape).float()
        above = (log_sigma - self.log_sigmas[:, None]).ge(0)
        low_idx = above.cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)


A1111_LAST_ALPHABAR = 4.8973451890853435e-08  # A1111's (and ComfyUI's) last alphabar of a zero-SNR schedule


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's "Zero Terminal SNR" noise schedule (Lin et al. 2023, as diffusers' rescale_betas_zero_snr): sqrt of
    alphabar shifted and scaled to end at 0, then its last value set to A1111's 4.8973451890853435e-08, so the
    largest sigma is finite (about 4,519) for the k-diffusion samplers to start from."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    rescaled = root ** 2
    rescaled[-1] = A1111_LAST_ALPHABAR
    return rescaled


def _zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def uniform(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    return _zero(m.t_to_sigma(torch.linspace(len(m.sigmas) - 1, 0, n)))


def karras(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = lo ** (1 / rho), hi ** (1 / rho)
    return _zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    return _zero(torch.linspace(math.log(hi), math.log(lo), n).exp())


def polyexponential(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    return _zero(torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)))


def _through_steps(n: int, m: ModelSigmas, lo: float, hi: float, sgm: bool) -> torch.Tensor:
    start, end = m.sigma_to_t(torch.tensor(hi)), m.sigma_to_t(torch.tensor(lo))
    steps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([m.t_to_sigma(t) for t in steps] + [0.0])


def sgm_uniform(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    return _through_steps(n, m, lo, hi, sgm=True)


def normal(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    return _through_steps(n, m, lo, hi, sgm=False)


def kl_optimal(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    """Ends at the lowest sigma, not at 0 (as A1111's)."""
    alpha_min, alpha_max = torch.arctan(torch.tensor(lo)), torch.arctan(torch.tensor(hi))
    steps = torch.arange(n + 1)
    return torch.tan(steps / n * alpha_min + (1.0 - steps / n) * alpha_max)


# NVIDIA's published 10-step schedules (Align Your Steps), SD-1.5's and SDXL's; other step counts interpolate
AYS = {False: [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
       True: [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]}


def align_your_steps(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    known = AYS[sdxl]
    if n == len(known):
        return torch.FloatTensor(known + [0.0])
    ys = np.log(known[::-1])
    drawn = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(known)), ys))[::-1].copy()
    return torch.FloatTensor(np.append(drawn, [0.0]))


def simple(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    stride = len(m.sigmas) / n
    return torch.FloatTensor([float(m.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0])


def ddim(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool) -> torch.Tensor:
    stride = max(len(m.sigmas) // n, 1)
    picked = [float(m.sigmas[x]) for x in range(1, len(m.sigmas), stride)]
    return torch.FloatTensor(picked[::-1] + [0.0])


def beta(n: int, m: ModelSigmas, lo: float, hi: float, sdxl: bool, a: float = 0.6, b: float = 0.6) -> torch.Tensor:
    """"Beta Sampling is All You Need" (Lee et al. 2024), at A1111's default alpha = beta = 0.6."""
    from scipy import stats
    ts = [stats.beta.ppf(x, a, b) for x in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([lo + x * (hi - lo) for x in ts] + [0.0])


# A1111's schedule types by their labels ("Automatic" is each sampler's own: see ksampler.SAMPLERS)
SCHEDULES = {"Uniform": uniform, "Karras": karras, "Exponential": exponential, "Polyexponential": polyexponential,
             "SGM Uniform": sgm_uniform, "KL Optimal": kl_optimal, "Align Your Steps": align_your_steps,
             "Simple": simple, "Normal": normal, "DDIM": ddim, "Beta": beta}


DEFAULT_RHO = {"Karras": 7.0, "Polyexponential": 1.0}  # the schedules that take A1111's "Schedule rho"


def schedule_sigmas(schedule: str, n: int, m: ModelSigmas, sdxl: bool = False, discard_penultimate: bool = False,
                    rho: float = 0.0, sigma_min: float = 0.0, sigma_max: float = 0.0) -> torch.Tensor:
    """The n + 1 sigmas of n steps (A1111's KDiffusionSampler.get_sigmas): with `discard_penultimate` (DPM2, DPM2 a,
    DPM++ 3M SDE, or A1111's "Always discard next-to-last sigma"), one step more is scheduled and its next-to-last
    sigma dropped. A1111's "Schedule rho", "Schedule min sigma" and "Schedule max sigma": 0 is the schedule's own
    rho and the model's lowest and highest sigma (Uniform takes none of them)."""
    steps = n + 1 if discard_penultimate else n
    lo, hi = sigma_min or m.sigma_min, sigma_max or m.sigma_max
    extra = {"rho": rho} if rho and schedule in DEFAULT_RHO else {}
    sigmas = SCHEDULES[schedule](steps, m, lo, hi, sdxl, **extra).float()
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
