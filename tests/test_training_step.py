"""The training step's named parts (training/step.py) on their own: batch, loss, step, and the divergence check.

The whole loop is tested through `personae train` elsewhere (test_train*.py, test_runs.py, test_interrupts.py);
here each part is checked against what it must compute, on a tiny real UNet.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from personae.errors import UserError
from personae.training.step import (
    Batch,
    after_step,
    check_finite,
    diffusion_loss,
    draw_batch,
    draw_noise,
    optimizer_step,
    seeded,
)


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=2, norm_num_groups=4)


def _posteriors(n: int, logvar: float = 0.0) -> list[torch.Tensor]:
    """VAE posterior parameters as `latent_dist.parameters` holds them: 4 means, then 4 log-variances."""
    gen = torch.Generator().manual_seed(1)
    return [torch.cat([torch.randn(4, 8, 8, generator=gen), torch.full((4, 8, 8), logvar)]) for _ in range(n)]


def test_a_batch_is_its_seed_and_step():
    posteriors = _posteriors(4)
    a = draw_batch(seeded(0, 5, 0), posteriors, list("abcd"), 0.5, 1000)
    b = draw_batch(seeded(0, 5, 0), posteriors, list("abcd"), 0.5, 1000)
    c = draw_batch(seeded(0, 6, 0), posteriors, list("abcd"), 0.5, 1000)
    for x, y in ((a.latents, b.latents), (a.noise, b.noise), (a.timesteps, b.timesteps)):
        assert torch.equal(x, y)
    assert not torch.equal(a.noise, c.noise) and not torch.equal(a.latents, c.latents)
    assert a.latents.shape == a.noise.shape == (4, 4, 8, 8) and a.timesteps.shape == (4,)
    assert 0 <= int(a.timesteps.min()) and int(a.timesteps.max()) < 1000
    # a process's slice of the global batch is that batch's rows, whatever the process count
    half = a.part(slice(2, 4))
    assert torch.equal(half.latents, a.latents[2:]) and half.captions == ["c", "d"]


def test_latents_are_sampled_from_the_posterior_and_scaled():
    sharp = draw_batch(seeded(0, 1), _posteriors(2, logvar=-30.0), ["", ""], 0.18215, 1000)
    means = torch.stack([p[:4] for p in _posteriors(2)])
    assert torch.allclose(sharp.latents, means * 0.18215, atol=1e-6)  # no variance: the scaled mean
    wide = draw_batch(seeded(0, 1), _posteriors(2, logvar=0.0), ["", ""], 1.0, 1000)
    eps = torch.randn((2, 4, 8, 8), generator=seeded(0, 1))  # the first draw of the step is the latent sample's
    assert torch.allclose(wide.latents, means + eps, atol=1e-6)


def test_noise_offset_adds_one_value_per_channel():
    plain, _ = draw_noise(seeded(3), (2, 4, 8, 8), 1000)
    offset, _ = draw_noise(seeded(3), (2, 4, 8, 8), 1000, noise_offset=0.1)
    shift = offset - plain
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0 < shift.abs().max() < 1.0


def test_random_and_adaptive_noise_offsets_are_kohyas():
    """kohya's apply_noise_offset written out: strength rand() x offset (random strength), plus adaptive x |mean of
    each example's channel| clamped at 0, times one normal draw per example and channel."""
    shape = (3, 4, 8, 8)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(9)) + torch.tensor([1.0, -2, 0.5, 0])[:, None,
                                                                                                            None]
    got, timesteps = draw_noise(seeded(3), shape, 1000, noise_offset=0.1, offset_random=True,
                                adaptive_noise_scale=0.05, latents=latents)
    gen = seeded(3)
    want = torch.randn(shape, generator=gen)
    strength = float(torch.rand((), generator=gen)) * 0.1
    offset = (strength + 0.05 * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp_min(0)
    want = want + offset * torch.randn((3, 4, 1, 1), generator=gen)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(timesteps, torch.randint(0, 1000, (3,), generator=gen))
    # a negative adaptive scale never makes the offset negative
    low, _ = draw_noise(seeded(3), shape, 1000, noise_offset=0.01, adaptive_noise_scale=-1.0, latents=latents)
    plain, _ = draw_noise(seeded(3), shape, 1000)
    first = torch.randn(shape, generator=seeded(3))
    assert torch.equal(plain, first) and torch.allclose(low[:, 3], first[:, 3], atol=0.02)
    assert torch.allclose(low[:, :2], first[:, :2], atol=1e-7)  # channels with a mean past 0.01: offset 0
    # the batch hands its latents to the noise: the same as drawing them apart
    posteriors = _posteriors(2)
    batch = draw_batch(seeded(0, 2), posteriors, ["", ""], 0.5, 1000, noise_offset=0.1, offset_random=True,
                       adaptive_noise_scale=0.05)
    gen = seeded(0, 2)
    eps = torch.randn((2, 4, 8, 8), generator=gen)
    z = torch.stack([p[:4] + p[4:].mul(0.5).exp() * e for p, e in zip(posteriors, eps)]) * 0.5
    noise, _ = draw_noise(gen, (2, 4, 8, 8), 1000, noise_offset=0.1, offset_random=True, adaptive_noise_scale=0.05,
                          latents=z)
    assert torch.allclose(batch.latents, z, atol=1e-6) and torch.allclose(batch.noise, noise, atol=1e-6)


def test_noise_offset_options_need_a_noise_offset():
    from personae.config.train import TrainSection

    for option in ({"noise_offset_random_strength": True}, {"adaptive_noise_scale": 0.01}):
        with pytest.raises(ValueError, match="train.noise_offset is 0"):
            TrainSection(**option)
        assert TrainSection(noise_offset=0.05, **option)


def test_a_timestep_range_draws_only_its_timesteps_and_the_full_range_is_unchanged():
    """kohya's --min_timestep / --max_timestep: the draws stay in [min, max); the default draws what it always drew
    (same seed, same timesteps: runs and resumes made before the option are reproduced)."""
    _, full = draw_noise(seeded(4), (4000, 1, 1, 1), 1000)
    _, default = draw_noise(seeded(4), (4000, 1, 1, 1), 1000, min_timestep=0)
    _, low = draw_noise(seeded(4), (4000, 1, 1, 1), 600, min_timestep=200)
    assert torch.equal(full, default) and full.min() < 20 and full.max() > 980
    assert low.min() == 200 and low.max() == 599
    batch = draw_batch(seeded(0, 1), _posteriors(64), [""] * 64, 1.0, 300, min_timestep=100)
    assert 100 <= batch.timesteps.min() and batch.timesteps.max() < 300


def test_the_job_refuses_a_timestep_range_with_nothing_in_it():
    from pydantic import ValidationError

    from personae.config.train import TrainSection

    assert TrainSection(min_timestep=100, max_timestep=700).max_timestep == 700
    with pytest.raises(ValidationError, match="max_timestep .400. must be above train.min_timestep .400."):
        TrainSection(min_timestep=400, max_timestep=400)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_loss_is_the_prediction_error_against_the_right_target(prediction):
    unet, scheduler = _unet(), DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    batch = draw_batch(seeded(0, 0), _posteriors(3), ["", "", ""], 1.0, 1000)
    embeddings = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = diffusion_loss(unet, scheduler, batch, embeddings)
        noisy = scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
        target = batch.noise if prediction == "epsilon" else scheduler.get_velocity(batch.latents, batch.noise,
                                                                                       batch.timesteps)
        expected = F.mse_loss(unet(noisy, batch.timesteps, encoder_hidden_states=embeddings).sample, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_snr_weighting_follows_the_paper():
    unet, scheduler = _unet(), DDPMScheduler(num_train_timesteps=1000)
    batch = draw_batch(seeded(0, 0), _posteriors(4), [""] * 4, 1.0, 1000)
    batch.timesteps = torch.tensor([5, 100, 500, 990])  # SNR from large to small
    embeddings = torch.zeros(4, 5, 8)
    with torch.no_grad():
        plain = [diffusion_loss(unet, scheduler, batch.part(slice(i, i + 1)), embeddings[:1]).item() for i in range(4)]
        weighted = diffusion_loss(unet, scheduler, batch, embeddings, min_snr_gamma=5.0).item()
        huge = diffusion_loss(unet, scheduler, batch, embeddings, min_snr_gamma=1e12).item()
    snr = compute_snr(scheduler, batch.timesteps)
    weights = (snr.clamp(max=5.0) / snr).tolist()
    assert weights[0] < 0.01 and weights[-1] == pytest.approx(1.0)  # nearly clean steps count least
    assert weighted == pytest.approx(sum(w * p for w, p in zip(weights, plain)) / 4, rel=1e-4)
    assert huge == pytest.approx(sum(plain) / 4, rel=1e-4)  # gamma above every SNR: no weighting


def test_a_step_clips_the_gradient_then_clears_it():
    for max_norm in (0.0, 1e-3):
        weight = torch.nn.Parameter(torch.ones(10))
        optimizer = torch.optim.SGD([weight], lr=1.0)
        loss = (weight * torch.arange(10.0)).sum() * 100  # gradient norm about 1,700
        optimizer_step(loss, optimizer, [weight], max_norm)
        moved = (torch.ones(10) - weight.detach()).norm().item()
        expected = 100 * torch.arange(10.0).norm().item() if not max_norm else max_norm
        assert moved == pytest.approx(expected, rel=1e-4), max_norm
        assert weight.grad is None


def test_after_a_step_the_schedule_moves_and_the_ema_follows():
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=4)
    ema = EMAModel([weight], decay=0.5, min_decay=0.5, update_after_step=0, use_ema_warmup=False)
    for value in (1.0, 3.0):
        optimizer.step()
        with torch.no_grad():
            weight.fill_(value)
        after_step(schedule, ema, [weight])
    assert schedule.get_last_lr()[0] == pytest.approx(0.5)
    assert ema.shadow_params[0][0].item() == pytest.approx(2.0)  # 1 (the first step copies), then half-way to 3
    optimizer.step()
    after_step(schedule, None, [weight])  # no EMA: the schedule alone
    assert schedule.get_last_lr()[0] == pytest.approx(0.25)


def test_a_loss_that_is_not_finite_ends_the_run_naming_what_is_left():
    asked = []
    check_finite(0.25, 3, lambda: asked.append(1) or None, "fix")
    assert not asked  # a finite loss does not look for checkpoints
    with pytest.raises(UserError, match=r"nan at step 7: training diverged\. The last good checkpoint is ck/6"):
        check_finite(float("nan"), 7, lambda: "ck/6", "Lower train.learning_rate.")
    with pytest.raises(UserError, match="No checkpoint was written"):
        check_finite(float("inf"), 1, lambda: None, "Lower train.learning_rate.")
    assert isinstance(Batch(torch.zeros(1), torch.zeros(1), torch.zeros(1)).captions, list)


def test_model_builders_leave_the_callers_random_state_and_threads_alone(tmp_path):
    """Library functions change no process-wide state: seeded builders fork torch's generator."""
    from personae.models.tiny import build_tiny_pipeline
    from personae.models.tiny_motion import build_tiny_motion_adapter
    from personae.world.model import build_world_pipeline
    from personae.world.tokenizer import write_world_tokenizer

    write_world_tokenizer(tmp_path / "tok")
    torch.manual_seed(1234)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = build_tiny_pipeline(0).unet.conv_in.weight.detach().clone()
    build_world_pipeline(0, tmp_path / "tok")
    build_tiny_motion_adapter(0)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert torch.equal(build_tiny_pipeline(0).unet.conv_in.weight, first)  # still the seed's weights


def test_weights_that_are_not_finite_end_the_run_before_anything_is_saved():
    """A step can break the weights while its own loss was finite: the saver checks the weights themselves."""
    from personae.training.step import check_weights

    good, bad = torch.ones(3), torch.tensor([1.0, float("inf"), 0.0])
    check_weights([good], 4, lambda: "ck/3", "fix")
    with pytest.raises(UserError, match=r"at step 5: training diverged\. The last good checkpoint is ck/3"):
        check_weights([good, bad], 5, lambda: "ck/3", "Lower train.learning_rate.")


def test_a_masked_loss_is_the_mean_error_over_the_masked_pixels():
    """data.masked_loss: the step's loss equals the masked MSE computed by hand on the same tensors (per example:
    sum of mask x squared error over pixels and channels / (mask sum x channels)), and the prediction outside the
    mask gets no gradient."""
    from personae.training.step import per_example_loss

    unet, scheduler = _unet(), DDPMScheduler(num_train_timesteps=1000)
    batch = draw_batch(seeded(0, 0), _posteriors(2), ["", ""], 1.0, 1000)
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, :, 2:6, 1:5] = 1.0
    masks[1, :, :, 4:] = 0.5  # soft weights, as an area-downsampled mask edge has
    masks[1, :, 0, 0] = 0.25
    batch.masks = masks
    embeddings = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = diffusion_loss(unet, scheduler, batch, embeddings)
        noisy = scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
        error = (unet(noisy, batch.timesteps, encoder_hidden_states=embeddings).sample - batch.noise) ** 2
    by_hand = [(error[i] * masks[i]).sum() / (masks[i].sum() * 4) for i in range(2)]
    assert loss.item() == pytest.approx(float(sum(by_hand) / 2), rel=1e-5)
    assert loss.item() != pytest.approx(float(error.mean()), rel=1e-3)  # not the plain loss
    # outside the mask: zero gradient, and any prediction there gives the same loss
    prediction = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8)
    per_example_loss(prediction, target, masks).mean().backward()
    outside = (masks == 0).expand_as(prediction)
    assert torch.all(prediction.grad[outside] == 0) and torch.all(prediction.grad[~outside] != 0)
    changed = prediction.detach() + 100.0 * outside
    assert torch.equal(per_example_loss(changed, target, masks), per_example_loss(prediction.detach(), target, masks))
    # an all-white mask is the plain loss; the rows of a process's part keep their masks
    assert torch.allclose(per_example_loss(prediction.detach(), target, torch.ones(2, 1, 8, 8)),
                          per_example_loss(prediction.detach(), target))
    assert torch.equal(batch.part(slice(1, 2)).masks, masks[1:])


def test_multires_noise_adds_coarse_layers_and_keeps_unit_variance_and_the_timesteps():
    """kohya's --multires_noise_iterations / --multires_noise_discount: the noise gains low-frequency layers (the
    per-channel mean over a picture, which plain noise almost never moves, varies widely), is scaled back to
    standard deviation 1, and the timesteps are the same seed's without it."""
    shape = (16, 4, 32, 32)
    plain, t_plain = draw_noise(seeded(5), shape, 1000)
    pyramid, t_pyramid = draw_noise(seeded(5), shape, 1000, multires_iterations=6, multires_discount=0.8)
    again, _ = draw_noise(seeded(5), shape, 1000, multires_iterations=6, multires_discount=0.8)
    assert torch.equal(t_plain, t_pyramid) and torch.equal(pyramid, again)
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-5)
    assert pyramid.mean(dim=(2, 3)).std() > 5 * plain.mean(dim=(2, 3)).std()  # measured: 0.35 against 0.03
    # neighbouring pixels are correlated (the upsampled layers), plain noise's are not
    def neighbours(x):
        return torch.corrcoef(torch.stack([x[..., :, :-1].flatten(), x[..., :, 1:].flatten()]))[0, 1].item()

    assert abs(neighbours(plain)) < 0.02 and neighbours(pyramid) > 0.1  # measured: 0.005 and 0.28
    # a discount near 0 leaves only the first layer (r**0 = 1: noise at full size): plain noise, rescaled
    tiny, _ = draw_noise(seeded(5), shape, 1000, multires_iterations=6, multires_discount=1e-9)
    first = torch.randn(shape, generator=_after_timesteps(seeded(5), shape))
    assert torch.allclose(tiny, (plain + first) / (plain + first).std(), atol=1e-5)
    batch = draw_batch(seeded(0, 1), _posteriors(4), [""] * 4, 1.0, 1000, multires_iterations=3)
    assert batch.noise.std().item() == pytest.approx(1.0, abs=1e-5)


def _after_timesteps(gen: torch.Generator, shape) -> torch.Generator:
    """The generator past draw_noise's own draws (noise, timesteps) and the first layer's size draw."""
    torch.randn(shape, generator=gen), torch.randint(0, 1000, (shape[0],), generator=gen)
    torch.rand((), generator=gen)
    return gen


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_input_perturbation_noises_the_input_and_not_the_target(prediction):
    """kohya's --ip_noise_gamma: the UNet sees add_noise(latents, noise + gamma x fresh noise); the target is the
    noise (or the velocity) without it; the rest of the batch is the same seed's without the option."""
    unet, scheduler = _unet(), DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    plain = draw_batch(seeded(0, 3), _posteriors(3), ["", "", ""], 1.0, 1000)
    batch = draw_batch(seeded(0, 3), _posteriors(3), ["", "", ""], 1.0, 1000, ip_noise_gamma=0.1)
    for a, b in ((plain.latents, batch.latents), (plain.noise, batch.noise), (plain.timesteps, batch.timesteps)):
        assert torch.equal(a, b)
    assert plain.perturbation is None and batch.perturbation.std().item() == pytest.approx(0.1, rel=0.1)
    assert torch.equal(batch.part(slice(1, 2)).perturbation, batch.perturbation[1:2])
    seen = []
    hook = unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    embeddings = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = diffusion_loss(unet, scheduler, batch, embeddings)
    hook.remove()
    noisy = scheduler.add_noise(batch.latents, batch.noise + batch.perturbation, batch.timesteps)
    assert torch.allclose(seen[0], noisy, atol=1e-6)
    target = batch.noise if prediction == "epsilon" else scheduler.get_velocity(batch.latents, batch.noise,
                                                                                   batch.timesteps)
    with torch.no_grad():
        expected = F.mse_loss(unet(noisy, batch.timesteps, encoder_hidden_states=embeddings).sample, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # random strength: one strength per batch, drawn in [0, gamma)
    strengths = [draw_batch(seeded(0, s), _posteriors(8), [""] * 8, 1.0, 1000, ip_noise_gamma=0.2,
                            ip_noise_random=True).perturbation.std().item() for s in range(20)]
    assert max(strengths) < 0.2 * 1.15 and min(strengths) < 0.1 and len({round(s, 4) for s in strengths}) == 20


def test_huber_and_smooth_l1_losses_are_kohyas_pseudo_huber():
    """kohya's conditional_loss: huber = 2c(sqrt(d^2 + c^2) - c), smooth_l1 = 2(sqrt(d^2 + c^2) - c), c per
    example; huber is the squared error for small errors and 2c|d| for large ones; l1 is |d|."""
    from personae.training.step import huber_threshold, per_example_loss

    prediction = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0.1, 0.5, 1.0])
    d = prediction - target
    cc = c.view(3, 1, 1, 1)
    huber = per_example_loss(prediction, target, None, "huber", c)
    smooth = per_example_loss(prediction, target, None, "smooth_l1", c)
    assert torch.allclose(huber, (2 * cc * (torch.sqrt(d**2 + cc**2) - cc)).mean(dim=(1, 2, 3)), rtol=1e-6)
    assert torch.allclose(smooth, (2 * (torch.sqrt(d**2 + cc**2) - cc)).mean(dim=(1, 2, 3)), rtol=1e-6)
    assert torch.allclose(per_example_loss(prediction, target, None, "l1"), d.abs().mean(dim=(1, 2, 3)))
    small, large = torch.full((1, 1, 2, 2), 1e-2), torch.full((1, 1, 2, 2), 100.0)
    zero = torch.zeros(1, 1, 2, 2)
    assert per_example_loss(small, zero, None, "huber", torch.tensor([0.5])).item() == pytest.approx(1e-4, rel=1e-2)
    assert per_example_loss(large, zero, None, "huber", torch.tensor([0.5])).item() == pytest.approx(99.5, rel=1e-3)
    # the thresholds per timestep: kohya's three schedules
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012)
    t = torch.tensor([0, 500, 999])
    assert huber_threshold(scheduler, t, 0.1, "constant").tolist() == pytest.approx([0.1] * 3)
    assert huber_threshold(scheduler, t, 0.1, "exponential").tolist() == pytest.approx(
        [1.0, 0.1**0.5, 0.1**0.999], rel=1e-5)
    snr = huber_threshold(scheduler, t, 0.1, "snr")
    sigmas = ((1 - scheduler.alphas_cumprod[t]) / scheduler.alphas_cumprod[t]) ** 0.5
    assert torch.allclose(snr, 0.9 / (1 + sigmas) ** 2 + 0.1)
    assert snr[0] > 0.9 and snr[2] < 0.11  # near 1 for nearly clean latents, near c for nearly pure noise


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_debiased_estimation_and_v_as_epsilon_weight_each_example_as_kohya(prediction):
    from personae.training.step import LossShape

    unet, scheduler = _unet(), DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    batch = draw_batch(seeded(0, 0), _posteriors(4), [""] * 4, 1.0, 1000)
    batch.timesteps = torch.tensor([0, 100, 500, 990])
    embeddings = torch.zeros(4, 5, 8)
    with torch.no_grad():
        plain = [diffusion_loss(unet, scheduler, batch.part(slice(i, i + 1)), embeddings[:1]).item() for i in range(4)]
        debiased = diffusion_loss(unet, scheduler, batch, embeddings, shape=LossShape(debiased_estimation=True))
        v_like = diffusion_loss(unet, scheduler, batch, embeddings, shape=LossShape(scale_v_pred_like_noise=True))
        both = diffusion_loss(unet, scheduler, batch, embeddings, 5.0, LossShape(debiased_estimation=True))
    snr = compute_snr(scheduler, batch.timesteps).clamp(max=1000)
    assert snr[0] == 1000  # t = 0: SNR in the thousands, capped as kohya caps it
    weights = 1 / (snr + 1) if prediction == "v_prediction" else 1 / snr.sqrt()
    assert debiased.item() == pytest.approx(sum(w * p for w, p in zip(weights.tolist(), plain)) / 4, rel=1e-4)
    v_weights = (snr / (snr + 1)).tolist() if prediction == "v_prediction" else [1.0] * 4  # epsilon: unchanged
    assert v_like.item() == pytest.approx(sum(w * p for w, p in zip(v_weights, plain)) / 4, rel=1e-4)
    raw = compute_snr(scheduler, batch.timesteps)
    min_snr = raw.clamp(max=5.0) / (raw + 1 if prediction == "v_prediction" else raw)
    assert both.item() == pytest.approx(sum(m * w * p for m, w, p in zip(min_snr.tolist(), weights.tolist(), plain))
                                        / 4, rel=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_zero_terminal_snr_noises_to_pure_noise_and_weighs_by_the_base_snr_as_kohya(prediction):
    """kohya --zero_terminal_snr: the betas rescaled (Lin et al. 2023, kohya's enforce_zero_terminal_snr) so the
    last step's input is the noise alone; min-SNR reads the schedule's SNR from before the rescale (kohya computes
    all_snr first), so the last step's weight is finite for epsilon models too."""
    from personae.training.step import LossShape

    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
              "beta_end": 0.012, "prediction_type": prediction}
    base = DDPMScheduler.from_config(config)
    zero = DDPMScheduler.from_config({**config, "rescale_betas_zero_snr": True})
    # kohya's formula, written out: sqrt(alphabar) shifted to end at 0 and scaled to keep its first value
    root = base.alphas_cumprod.double().sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    assert torch.allclose(zero.alphas_cumprod.double(), root**2, atol=1e-6) and zero.alphas_cumprod[-1] == 0
    unet = _unet()
    batch = draw_batch(seeded(0, 0), _posteriors(2), [""] * 2, 1.0, 1000)
    batch.timesteps = torch.tensor([10, 999])
    noisy = zero.add_noise(batch.latents, batch.noise, batch.timesteps)
    assert torch.equal(noisy[1], batch.noise[1])  # the last step: nothing of the image is left
    base_snr = base.alphas_cumprod / (1 - base.alphas_cumprod)
    embeddings = torch.zeros(2, 5, 8)
    with torch.no_grad():
        plain = [diffusion_loss(unet, zero, batch.part(slice(i, i + 1)), embeddings[:1]).item() for i in range(2)]
        weighted = diffusion_loss(unet, zero, batch, embeddings, 5.0, LossShape(snr=base_snr))
        unguarded = diffusion_loss(unet, zero, batch, embeddings, 5.0)
    snr = base_snr[batch.timesteps]
    weights = snr.clamp(max=5.0) / (snr + 1 if prediction == "v_prediction" else snr)
    assert weighted.item() == pytest.approx(sum(w * p for w, p in zip(weights.tolist(), plain)) / 2, rel=1e-4)
    if prediction == "epsilon":  # the rescaled schedule's own SNR is 0 there: min-SNR would divide 0 by 0
        assert torch.isnan(unguarded)
