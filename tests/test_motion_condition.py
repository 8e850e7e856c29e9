"""The motion condition (inference/motion_condition.py): the caption's motion, read by a head from its words and
given to every motion module as a track that grows with the frame; trained by `personae world motion --set
condition.learning_rate=...`, found by `personae animate` beside the adapter."""

import shutil

import pytest
import torch

from personae.world.model import WORLD_DIR

PROMPTS = ["a white square on a red background, full shot, moving left",
           "a white square on a red background, full shot, moving right"]


@pytest.fixture(scope="module")
def world_motion_unet():
    """The world UNet with a fresh adapter whose output projections are random (zero ones would hide any input), the
    two prompts' text states and the world tokenizer."""
    from personae.inference.animate import motion_unet
    from personae.inference.session import open_session
    from personae.world.motion_settings import WorldMotion
    from personae.world.motion_train import build_adapter

    session = open_session(str(WORLD_DIR), device="cpu")
    adapter = build_adapter(session.pipe.unet, WorldMotion())
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if ".proj_out." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    states = torch.cat([session.encoder.encode(p, clip_skip=1).embeds for p in PROMPTS])
    return motion_unet(session.pipe.unet, adapter).eval(), states, session.pipe.tokenizer


def _predict(unet, states, frames=4, timestep=700):
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(len(states), 4, frames, 8, 8, generator=gen)
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=states.repeat_interleave(frames, dim=0)).sample


def test_an_untrained_condition_changes_nothing_and_a_trained_one_follows_the_words(world_motion_unet):
    from personae.inference.motion_condition import MotionCondition, motion_modules

    unet, states, tokenizer = world_motion_unet
    before = _predict(unet, states)
    condition = MotionCondition.for_unet(unet, tokenizer)
    assert len(condition.layers) == len(motion_modules(unet)) == 10  # the world adapter's motion modules
    assert condition.head.num_embeddings == len(tokenizer) == 615  # a vector per token of the world vocabulary
    handles = condition.attach(unet)
    try:
        assert torch.equal(_predict(unet, states), before)  # zero layers: exactly the adapter's own prediction
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in condition.layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
            condition.head.weight.copy_(torch.randn(condition.head.weight.shape, generator=gen))
        assert torch.allclose(_predict(unet, states), before, atol=1e-6)  # nothing given: d = 0 (still)
        with torch.no_grad():
            read = condition.read(tokenizer, PROMPTS + [""])
        assert (read[0] - read[1]).abs().max() > 1e-3 and torch.equal(read[2], torch.zeros(3))  # "" reads nothing
        condition.given = read[:2]
        after = _predict(unet, states)
        assert (after - before).abs().max() > 1e-3 and (after[0] - after[1] - before[0] + before[1]).abs().max() > 1e-3
        # one prompt for two clips is classifier-free guidance's [negative, positive]: the negative branch gets 0
        condition.given = read[:1].repeat(2, 1)
        both = _predict(unet, states)
        condition.given = read[:1]
        guided = _predict(unet, states)
        assert torch.allclose(guided[0], before[0], atol=1e-6) and torch.allclose(guided[1], both[1], atol=1e-6)
        assert (both[0] - before[0]).abs().max() > 1e-3
        condition.given = read[:1].repeat(3, 1)
        with pytest.raises(ValueError, match="3 prompts for 2 clips"):
            _predict(unet, states)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(_predict(unet, states), before)


def test_the_condition_acts_only_from_its_timestep_up_in_sampling_and_in_a_training_batch(world_motion_unet):
    """Sampling gives one timestep for all clips, training one per clip: below `from_timestep` a clip is the
    adapter's own prediction, at or above it the conditioned one."""
    from personae.inference.motion_condition import MotionCondition

    unet, states, tokenizer = world_motion_unet
    condition = MotionCondition.for_unet(unet, tokenizer, from_timestep=500)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in condition.layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        condition.head.weight.copy_(torch.randn(condition.head.weight.shape, generator=gen))
    plain = {t: _predict(unet, states, timestep=t) for t in (499, 500)}
    handles = condition.attach(unet)
    try:
        with torch.no_grad():
            condition.given = condition.read(tokenizer, PROMPTS)
        assert torch.equal(_predict(unet, states, timestep=499), plain[499])  # below: untouched
        at = _predict(unet, states, timestep=500)
        assert (at - plain[500]).abs().max() > 1e-3
        mixed = _predict(unet, states, timestep=torch.tensor([499, 500]))  # a training batch: one timestep per clip
        assert torch.allclose(mixed[0], plain[499][0], atol=1e-6) and torch.allclose(mixed[1], at[1], atol=1e-6)
    finally:
        for h in handles:
            h.remove()


def test_the_head_reads_the_motion_from_the_words_of_captions_it_never_saw():
    """Why the head is a bag of token vectors and not a reading of the text states: trained on the training clips'
    captions it reads all 64 held-out captions (held-out colour pairs) right; a linear head on the states' mean
    read 16-25 % of them (docs/world.md)."""
    import numpy as np

    from personae.inference.motion_condition import MotionCondition
    from personae.inference.session import open_session
    from personae.world.clips import MOTION_VECTORS, eval_clips, random_clip

    tokenizer = open_session(str(WORLD_DIR), device="cpu").pipe.tokenizer
    rng = np.random.default_rng([0, 7])
    train, held_out = [random_clip(rng) for _ in range(512)], eval_clips(64)
    torch.manual_seed(0)
    condition = MotionCondition(len(tokenizer), [4])
    ids = condition.token_ids(tokenizer, [c.caption() for c in train])
    target = torch.tensor([MOTION_VECTORS[c.motion] for c in train])
    optimizer = torch.optim.AdamW(condition.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(600):
        batch = torch.randint(len(train), (4,)).tolist()
        loss = torch.nn.functional.mse_loss(condition.read(tokenizer, ids=[ids[i] for i in batch]), target[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vectors = torch.tensor(list(MOTION_VECTORS.values()))
    with torch.no_grad():
        read = condition.read(tokenizer, [c.caption() for c in held_out])
    nearest = [list(MOTION_VECTORS)[i] for i in torch.cdist(read, vectors).argmin(1).tolist()]
    assert nearest == [c.motion for c in held_out]
    assert {c.motion for c in held_out} == set(MOTION_VECTORS)


def test_the_track_grows_from_minus_d_on_the_first_frame_to_d_on_the_last():
    from personae.inference.motion_condition import MotionCondition

    condition = MotionCondition(8, [6])
    with torch.no_grad():
        condition.layers[0].weight.copy_(torch.eye(6))
    d = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 1.0]])
    condition._d = d
    out = condition._add(0, torch.zeros(2 * 3, 5, 6))  # 2 clips x 3 pixels, 5 frames, 6 channels
    track = out.view(2, 3, 5, 6)
    assert torch.equal(track[:, 0], track[:, 2])  # the same at every pixel
    assert torch.allclose(track[:, 0, 0, :3], -d) and torch.allclose(track[:, 0, -1, :3], d)
    assert torch.allclose(track[:, 0, 2, :3], torch.zeros(2, 3))  # the middle frame
    assert torch.allclose(track[:, 0, :, 3:], d[:, None].expand(2, 5, 3))  # the motion itself, every frame


def test_the_file_round_trips_and_a_file_for_another_adapter_is_refused(world_motion_unet, tmp_path):
    from safetensors.torch import load_file, save_file

    from personae.inference.motion_condition import MotionCondition
    from personae.models.folders import save_safetensors

    unet, _, tokenizer = world_motion_unet
    condition = MotionCondition.for_unet(unet, tokenizer, from_timestep=300)
    with torch.no_grad():
        condition.head.weight.fill_(0.5)
    path = condition.save(tmp_path / "c.safetensors")
    again = MotionCondition.load(path, unet, tokenizer)
    assert all(torch.equal(a, b) for a, b in zip(condition.state_dict().values(), again.state_dict().values()))
    assert again.from_timestep == 300
    save_safetensors(load_file(str(path)), tmp_path / "header.safetensors",
                     metadata={"format": "personae-motion-condition", "version": "1", "from_timestep": "late"})
    with pytest.raises(ValueError, match="from_timestep 'late'"):
        MotionCondition.load(tmp_path / "header.safetensors", unet, tokenizer)
    other = MotionCondition(len(tokenizer), [6, 6])
    wrong = other.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="another adapter"):
        MotionCondition.load(wrong, unet, tokenizer)
    vocabulary = MotionCondition(10, [layer.out_features for layer in condition.layers])
    with pytest.raises(ValueError, match="another model"):
        MotionCondition.load(vocabulary.save(tmp_path / "vocabulary.safetensors"), unet, tokenizer)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a personae motion condition"):
        MotionCondition.load(tmp_path / "plain.safetensors", unet, tokenizer)
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        MotionCondition.load(tmp_path / "junk.safetensors", unet, tokenizer)


SHORT = ["dataset_size=8", "batch_size=2", "eval.clips=2", "eval.long_clips=0", "eval.steps=2", "warmup_steps=1",
         "lora.rank=0", "words.learning_rate=0", "condition.learning_rate=0.01", "condition.from_timestep=100"]


def _train(out):
    from personae.cli.main import main

    assert main(["world", "motion", str(out), "--steps", "3", "--quiet"] + [a for s in SHORT for a in ("--set", s)]) == 0


def condition_tokenizer(adapter):
    from personae.inference.session import open_session

    return open_session(str(WORLD_DIR), device="cpu").pipe.tokenizer


def test_the_learnt_words_and_the_condition_do_not_go_together():
    from pydantic import ValidationError

    from personae.world.motion_settings import WorldMotion

    with pytest.raises(ValidationError, match="words.learning_rate=0"):
        WorldMotion.model_validate({"words": {"learning_rate": 0.005}})  # the condition is on by default
    assert WorldMotion.model_validate({"condition": {"learning_rate": 0}, "words": {"learning_rate": 0.005}})


def test_training_writes_the_condition_and_animate_attaches_it(tmp_path, capsys):
    """Trained from zero with the motion modules (two runs: the same bytes); `personae animate` finds it in the
    adapter's folder and the clip changes with it; a broken one is one paragraph, exit 2."""
    from safetensors.torch import load_file

    from personae.cli.main import main
    from personae.config.animate import AnimateSettings
    from personae.inference.animate import animate, open_for
    from personae.inference.motion_condition import CONDITION_FILE

    first, second = tmp_path / "a", tmp_path / "b"
    _train(first)
    _train(second)
    assert (first / CONDITION_FILE).read_bytes() == (second / CONDITION_FILE).read_bytes()
    tensors = load_file(str(first / CONDITION_FILE))
    assert all(v.abs().max() > 0 for k, v in tensors.items() if k.startswith("layers."))  # moved from zero
    plain = tmp_path / "plain"
    shutil.copytree(first, plain)
    (plain / CONDITION_FILE).unlink()

    def clip(adapter):
        settings = AnimateSettings(model=str(WORLD_DIR), motion_adapter=str(adapter), prompt=PROMPTS[0], steps=2,
                                   frames=8, seed=0, cfg=4, clip_skip=1, sampler="DDIM", device="cpu")
        session = open_for(settings)
        return session.condition, [torch.tensor(list(f.getdata()), dtype=torch.float32) for f in
                                   animate(settings, session).frames]

    condition, with_it = clip(first)
    none, without = clip(plain)
    assert condition is not None and none is None and condition.from_timestep == 100  # as trained
    with torch.no_grad():  # animate gave the motion modules what the head reads in the prompt
        assert torch.equal(condition.given, condition.read(condition_tokenizer(first), [PROMPTS[0]]))
        assert condition.given.abs().max() > 0
    assert max((a - b).abs().max() for a, b in zip(with_it, without)) > 0
    (plain / CONDITION_FILE).write_bytes(b"broken")
    code = main(["animate", "--model", str(WORLD_DIR), "--motion-adapter", str(plain), "--prompt", PROMPTS[0],
                 "--steps", "1", "--frames", "4", "--out", str(tmp_path / "x.gif"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "motion condition" in err and CONDITION_FILE in err and "Traceback" not in err
    assert not (tmp_path / "x.gif").exists()
