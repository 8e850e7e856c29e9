"""Loop options users of kohya and diffusers expect, each shown to act (issue #4)."""

import random

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import prepared_subject, write_job

from personae.data.dataset import BatchPlan, Example, noisy_caption
from personae.jobs.runner import start
from personae.jobs.train import load_job, run_training

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_subject(tmp_path_factory.mktemp("data"), count=4, trigger="sks")


def _weights(tmp_path, tiny, prepared, name, **train):
    base = {"steps": 4, "batch_size": 2, "learning_rate": 1e-4, "verify_exports": False, "validation": {"steps": 1}}
    job = load_job(write_job(tmp_path, base_model=str(tiny), method="lora", data=prepared, output=tmp_path / name,
                             lora={"rank": 4, "alpha": 4}, train={**base, **train}))
    if job.train.mixed_precision != "no":  # accelerate keeps one precision per process: the job gets its own
        result = start(job).result(timeout=900)
    else:
        result = run_training(job)
    checkpoint = tmp_path / name / "checkpoints" / f"step-{result.steps:06d}"
    return load_file(str(checkpoint / "trainable.safetensors")), result


def _header(result) -> dict:
    with safe_open(str(result.run / "lora.safetensors"), "pt") as f:
        return f.metadata()


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_tag_shuffle_keeps_the_first_tags_and_dropout_empties_captions():
    caption = "sks, man, smiling, red hat, outdoors"
    rng = random.Random(0)
    shuffled = {noisy_caption(caption, rng, True, 2, 0.0) for _ in range(50)}
    assert len(shuffled) > 5 and all(s.startswith("sks, man, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    dropped = [noisy_caption(caption, random.Random(i), False, 0, 0.3) for i in range(400)]
    assert 0.2 < dropped.count("") / 400 < 0.4


def test_every_nth_epoch_trains_without_captions_as_kohya_counts_epochs():
    from personae.config.train import TrainJob
    from personae.training.loop import _Draws

    job = TrainJob.model_validate({"base_model": "m", "method": "lora", "output": "r", "data": {
        "path": ".", "caption_dropout_every_n_epochs": 2}})
    draws = _Draws(job, [Example("0.png", "sks, man", (64, 64))], None, (0, 1000), 1.0, tag=0, steps_per_epoch=3)
    captions = [draws.caption(0, random.Random(step), step) for step in range(12)]
    assert captions == ["sks, man"] * 3 + [""] * 3 + ["sks, man"] * 3 + [""] * 3  # kohya's epochs 2 and 4
    prior = _Draws(job, [Example("c.png", "a man", (64, 64))], None, (0, 1000), 1.0, tag=1, steps_per_epoch=3)
    assert prior.caption(0, random.Random(0), 4) == "a man"  # class images keep their captions


def test_batches_stay_within_one_size_bucket_and_cover_repeats():
    examples = [Example(f"{i}.png", "x", (64, 64) if i < 3 else (96, 64), repeats=2 if i == 0 else 1) for i in range(5)]
    plan = BatchPlan(examples, 2, seed=0)
    seen = []
    for step in range(plan.steps_per_epoch):
        batch = plan.batch_for_step(step)
        assert len({examples[i].size for i in batch}) == 1
        seen += batch
    assert seen.count(0) >= 2 and set(seen) == set(range(5))
    assert plan.batch_for_step(0) == BatchPlan(examples, 2, seed=0).batch_for_step(0)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_model, prepared):
    big, _ = _weights(tmp_path, tiny_model[0], prepared, "big", batch_size=2)
    accumulated, _ = _weights(tmp_path, tiny_model[0], prepared, "acc", batch_size=1, gradient_accumulation=2)
    assert _max_diff(big, accumulated) <= 1e-5


def test_gradient_checkpointing_gives_the_same_weights(tmp_path, tiny_model, prepared):
    plain, _ = _weights(tmp_path, tiny_model[0], prepared, "plain")
    checkpointed, _ = _weights(tmp_path, tiny_model[0], prepared, "ckpt", gradient_checkpointing=True)
    assert _max_diff(plain, checkpointed) <= 1e-6


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory, tiny_model, prepared):
    return _weights(tmp_path_factory.mktemp("plain"), tiny_model[0], prepared, "plain")[0]


@pytest.mark.parametrize("option", [{"noise_offset": 0.1}, {"min_snr_gamma": 1.0}, {"mixed_precision": "bf16"},
                                    {"optimizer": "prodigy", "learning_rate": 1.0},
                                    {"lr_scheduler": "cosine", "warmup_steps": 2}, {"ema": True},
                                    {"min_timestep": 200, "max_timestep": 600}, {"clip_skip": 2},
                                    {"multires_noise_iterations": 6, "multires_noise_discount": 0.3},
                                    {"ip_noise_gamma": 0.1}, {"loss_type": "huber"},
                                    {"loss_type": "smooth_l1", "huber_schedule": "exponential"},
                                    {"debiased_estimation": True}, {"optimizer": "adafactor"},
                                    {"optimizer": "lion", "learning_rate": 3e-5},
                                    {"zero_terminal_snr": True, "min_snr_gamma": 5.0}])
def test_each_option_runs_and_changes_the_result(tmp_path, tiny_model, prepared, plain_weights, option):
    """Each loop option reaches the step (the weights differ from the plain run's) and is recorded in the exports'
    header under kohya's ss_* name, as kohya's trainers write it."""
    plain = plain_weights
    changed, result = _weights(tmp_path, tiny_model[0], prepared, "changed", **option)
    assert all(torch.isfinite(v).all() for v in changed.values())
    if option.get("ema"):  # the checkpoint keeps raw weights; the export carries the average
        exported = load_file(str(result.run / "lora.safetensors"))
        assert exported  # and it reloaded identically (verify_exports is off here; see test_train)
    else:
        assert _max_diff(plain, changed) > 1e-7
    header = _header(result)
    kohya_names = {"clip_skip": "ss_clip_skip", "multires_noise_iterations": "ss_multires_noise_iterations",
                   "ip_noise_gamma": "ss_ip_noise_gamma", "loss_type": "ss_loss_type", "huber_schedule":
                   "ss_huber_schedule", "debiased_estimation": "ss_debiased_estimation", "optimizer": "ss_optimizer",
                   "noise_offset": "ss_noise_offset", "min_snr_gamma": "ss_min_snr_gamma",
                   "zero_terminal_snr": "ss_zero_terminal_snr"}
    for key, value in option.items():
        if key in kohya_names:
            assert header[kohya_names[key]] == (f"{value:g}" if isinstance(value, float) else str(value)), key


def test_tensorboard_events_are_written_when_installed(tmp_path, tiny_model, prepared):
    pytest.importorskip("tensorboard")
    _, result = _weights(tmp_path, tiny_model[0], prepared, "tb")
    assert list((result.run / "logs").glob("events.out.tfevents.*"))


def test_a_timestep_range_the_scheduler_lacks_is_one_paragraph_before_training(tmp_path, tiny_model, prepared):
    from personae.errors import UserError

    with pytest.raises(UserError) as err:
        _weights(tmp_path, tiny_model[0], prepared, "late", max_timestep=5000)
    assert "train.min_timestep / max_timestep" in str(err.value) and "0 .. 999" in str(err.value)
    assert not list((tmp_path / "late").glob("checkpoints/*"))


def test_tag_dropout_leaves_out_tags_after_the_kept_ones():
    """kohya's --caption_tag_dropout_rate: each tag after keep_tokens is left out with that chance (after the
    shuffle); without it, the same seed draws the same shuffled captions as before."""
    caption = "sks, man, a, b, c, d, e, f, g, h"
    runs = [noisy_caption(caption, random.Random(i), False, 2, 0.0, 0.25) for i in range(400)]
    assert all(r.startswith("sks, man") for r in runs)
    kept = sum(len(r.split(", ")) - 2 for r in runs) / (400 * 8)
    assert 0.7 < kept < 0.8  # 1 - 0.25
    assert all(r.split(", ")[2:] == [t for t in caption.split(", ")[2:] if t in r.split(", ")] for r in runs)  # order
    same = [noisy_caption(caption, random.Random(i), True, 2, 0.0, 0.0) for i in range(20)]
    assert same == [noisy_caption(caption, random.Random(i), True, 2, 0.0) for i in range(20)]
    assert noisy_caption("no tags here", random.Random(0), False, 0, 0.0, 0.9) == "no tags here"


def test_lora_plus_moves_the_up_matrices_ratio_times_faster(tmp_path, tiny_model, prepared, plain_weights):
    """lora.loraplus_lr_ratio: the up (lora_B) matrices get their own optimizer group at lr x ratio; with Adam a
    step moves a weight by about the learning rate, so after a few steps from zero the up matrices are about
    ratio times further out than in the plain run, and the down matrices about where they were."""
    from personae.config.train import LoraSection

    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared,
                             output=tmp_path / "plus", lora={"rank": 4, "alpha": 4, "loraplus_lr_ratio": 16},
                             train={"steps": 4, "batch_size": 2, "learning_rate": 1e-4, "verify_exports": False,
                                    "validation": {"steps": 1}}))
    result = run_training(job)
    plus = load_file(str(result.run / "checkpoints" / f"step-{result.steps:06d}" / "trainable.safetensors"))

    def mean_abs(weights, part):
        values = [v.abs().mean().item() for k, v in weights.items() if part in k]
        assert values, part
        return sum(values) / len(values)

    up = mean_abs(plus, "lora_B") / mean_abs(plain_weights, "lora_B")
    down = mean_abs(plus, "lora_A") / mean_abs(plain_weights, "lora_A")
    assert 8 < up < 20 and 0.9 < down < 1.1, (up, down)
    assert _header(result)["ss_loraplus_lr_ratio"] == "16"
    with pytest.raises(ValueError, match="loraplus_lr_ratio speeds up LoRA's up"):
        LoraSection(variant="loha", loraplus_lr_ratio=16)


@pytest.mark.parametrize("a, b", [({"lr_scheduler": "cosine_with_restarts"},
                                   {"lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 2}),
                                  ({"lr_scheduler": "polynomial"},
                                   {"lr_scheduler": "polynomial", "lr_scheduler_power": 2.0})])
def test_the_schedules_cycles_and_power_reach_the_schedule(tmp_path, tiny_model, prepared, a, b):
    first, _ = _weights(tmp_path, tiny_model[0], prepared, "a", **a)
    second, _ = _weights(tmp_path, tiny_model[0], prepared, "b", **b)
    assert _max_diff(first, second) > 1e-7


def test_training_encodes_captions_with_the_clip_skip_generation_uses(tiny_session, tmp_path, tiny_model, prepared):
    """train.clip_skip: the training text encoding is generation's for the same clip skip (A1111's "Clip skip",
    kohya's --clip_skip: the layer before the last, through the final layer norm), and a clip skip beyond the
    text encoder's layers is one paragraph before training."""
    from personae.errors import UserError
    from personae.training.text import encode_text

    pipe = tiny_session.pipe
    with torch.no_grad():
        by_skip = {}
        for skip in (1, 2):
            by_skip[skip] = encode_text(pipe, pipe.text_encoder, ["a photo of sks man"], skip)
            generated = tiny_session.encoder.encode("a photo of sks man", clip_skip=skip).embeds
            assert torch.allclose(by_skip[skip], generated, atol=1e-6), skip
    assert (by_skip[1] - by_skip[2]).abs().max() > 1e-2
    layers = pipe.text_encoder.config.num_hidden_layers
    with pytest.raises(UserError) as err:
        _weights(tmp_path, tiny_model[0], prepared, "deep", clip_skip=layers + 1)
    assert f"train.clip_skip {layers + 1} is more than" in str(err.value)
    assert not list((tmp_path / "deep").glob("checkpoints/*"))


LONG = ", ".join(f"tag{i} word{i}" for i in range(30))  # 189 tokens for the tiny tokenizer: three chunks of 75


def test_long_captions_are_encoded_in_chunks_as_generation_encodes_long_prompts(tiny_session):
    """train.max_token_length 150 / 225: a caption past 75 tokens is encoded as `personae generate` encodes a long
    prompt (chunks of 75, each between its own start and end tokens); shorter captions in the batch are padded
    with empty chunks; a short caption alone is the plain encoding, bit for bit."""
    from personae.training.text import caption_tokens, encode_text, stack_padded

    pipe = tiny_session.pipe
    assert len(caption_tokens(pipe, LONG)) > 150
    with torch.no_grad():
        three = encode_text(pipe, pipe.text_encoder, [LONG], 1, 3)
        generated = tiny_session.encoder.encode(LONG).embeds
        assert three.shape[1] == 3 * 77 and generated.shape[1] == 3 * 77
        assert torch.allclose(three, generated, atol=1e-6)
        two = encode_text(pipe, pipe.text_encoder, [LONG], 1, 2)  # cut at 150 tokens: the first two chunks
        assert torch.allclose(two, three[:, :154], atol=1e-6)
        short = "sks man, smiling"
        assert torch.equal(encode_text(pipe, pipe.text_encoder, [short], 1, 3),
                           encode_text(pipe, pipe.text_encoder, [short], 1, 1))
        batch = encode_text(pipe, pipe.text_encoder, [short, LONG], 2, 3)  # clip skip 2 too
        empty = encode_text(pipe, pipe.text_encoder, [""], 2, 1)[0]
        alone = encode_text(pipe, pipe.text_encoder, [short], 2, 1)[0]
        assert torch.allclose(batch[0], stack_padded([alone, batch[1]], empty)[0], atol=1e-6)
        assert torch.allclose(batch[0, 77:154], empty, atol=1e-6)


def test_weighted_captions_are_encoded_as_generation_weighs_a_prompt(tiny_model, tiny_session):
    """train.weighted_captions (kohya --weighted_captions): (word:1.5), [word] and BREAK weigh a caption's tokens as
    `personae generate` weighs a prompt's (A1111's Original emphasis, per chunk), with gradients for a text encoder
    that trains; off, the brackets are text."""
    from personae.models.resolve import load_pipeline, resolve_model
    from personae.training.text import encode_text

    pipe = tiny_session.pipe
    captions = ["a photo of (sks:1.5) man, [smiling]", f"(sks man:1.3), {LONG} BREAK red hat"]
    with torch.no_grad():
        for caption in captions:
            weighted = encode_text(pipe, pipe.text_encoder, [caption], 1, 3, weighted=True)
            generated = tiny_session.encoder.encode(caption).embeds[:, :3 * 77]  # max_token_length 225: 3 chunks
            assert weighted.shape == generated.shape and torch.allclose(weighted, generated, atol=1e-5), caption
            plain = encode_text(pipe, pipe.text_encoder, [caption], 1, 3)
            assert (plain.shape != weighted.shape) or (plain - weighted).abs().max() > 1e-3  # brackets as text
        unweighted = encode_text(pipe, pipe.text_encoder, ["a photo of sks man, smiling"], 1, 3, weighted=True)
        assert torch.allclose(unweighted, encode_text(pipe, pipe.text_encoder, ["a photo of sks man, smiling"], 1, 3))
        assert (unweighted - encode_text(pipe, pipe.text_encoder, captions[:1], 1, 3, weighted=True)).abs().max() > 1e-3
        batch = encode_text(pipe, pipe.text_encoder, captions, 1, 3, weighted=True)
        alone = encode_text(pipe, pipe.text_encoder, captions[:1], 1, 3, weighted=True)
        assert torch.allclose(batch[0, :77], alone[0], atol=1e-6)
    trained = load_pipeline(resolve_model(str(tiny_model[0])))
    layer = trained.text_encoder.get_input_embeddings()
    states = encode_text(trained, trained.text_encoder, captions[:1], 1, 1, weighted=True)
    states.square().mean().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_long_captions_train_whole_with_the_cache_or_without_and_the_cut_is_said(tmp_path, tiny_model):
    from train_helpers import prepared_subject

    data = prepared_subject(tmp_path / "data", count=2, trigger="sks")
    first = sorted((data / "images").glob("*.txt"))[0]  # the caption on disk is the one trained on
    first.write_text(f"a photo of sks star, {LONG}")  # one long caption, one short: the batch mixes chunk counts
    messages = []
    weights = {}
    for name, options in (("cut", {}), ("cached", {"max_token_length": 225}),
                          ("uncached", {"max_token_length": 225, "cache_text_encoder_outputs": False})):
        job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=data,
                                 output=tmp_path / name, lora={"rank": 4, "alpha": 4},
                                 train={"steps": 2, "batch_size": 2, "verify_exports": False,
                                        "validation": {"steps": 1}, **options}))
        said = []
        result = run_training(job, on_event=lambda e: said.append(str(getattr(e, "text", ""))))
        messages.append(said)
        checkpoint = result.run / "checkpoints" / f"step-{result.steps:06d}"
        weights[name] = load_file(str(checkpoint / "trainable.safetensors"))
    assert any("1 caption(s) have more than 75 tokens: cut there" in m for m in messages[0])
    assert not any("have more than" in m for m in messages[1])
    assert _max_diff(weights["cached"], weights["uncached"]) <= 1e-6  # the cache pads as the batch encoding does
    assert _max_diff(weights["cut"], weights["cached"]) > 1e-7  # the tokens past 75 reach the UNet
