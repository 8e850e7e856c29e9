"""A1111's prompt editing (inference/prompt_schedule.py): [from:to:when], [to:when], [from::when] and [a|b].

The schedules are A1111's own documented examples (prompt_parser.py's doctests, where they hold for its code); the
step-by-step conditioning is read at the UNet; the behaviour is shown on the shapes world, where the checker says
which shape and background a picture holds.
"""

from __future__ import annotations

import pytest
import torch

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.prompt_schedule import prompt_schedule, text_at
from personae.inference.txt2img import txt2img

pytestmark = pytest.mark.slow

A1111_EXAMPLES = {  # prompt -> its schedule over 10 steps
    "test": [(10, "test")],
    "a [b:3]": [(3, "a "), (10, "a b")],
    "a [b: 3]": [(3, "a "), (10, "a b")],
    "a [[[b]]:2]": [(2, "a "), (10, "a [[b]]")],
    "[(a:2):3]": [(3, ""), (10, "(a:2)")],
    "a [b : c : 1] d": [(1, "a b  d"), (10, "a  c  d")],
    "a[b:[c:d:2]:1]e": [(1, "abe"), (2, "ace"), (10, "ade")],
    "a [unbalanced": [(10, "a [unbalanced")],
    "a [b:.5] c": [(5, "a  c"), (10, "a b c")],
    "((a][:b:c [d:3]": [(3, "((a][:b:c "), (10, "((a][:b:c d")],
    "[a|(b:1.1)]": [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)],
    "a (red:1.2) [cat]": [(10, "a (red:1.2) [cat]")],  # emphasis stays as written for the attention parser
}


@pytest.mark.parametrize("prompt", list(A1111_EXAMPLES))
def test_schedules_are_a1111s(prompt):
    assert list(prompt_schedule(prompt, 10)) == A1111_EXAMPLES[prompt]


def test_a_long_schedule_and_which_text_each_step_uses():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
              "[ in background:0.25] [shoddy:masterful:0.5]")
    assert [end for end, _ in prompt_schedule(prompt, 100)] == [25, 50, 60, 75, 100]
    assert prompt_schedule(prompt, 100)[2][1] == ("fantasy landscape with a lake and an oak in foreground in "
                                                  "background masterful")
    schedule = prompt_schedule("a [b:3]", 10)  # A1111's reconstruct_cond_batch: step i takes the first end >= i
    assert [text_at(schedule, i) for i in range(10)] == ["a "] * 4 + ["a b"] * 6


def test_each_step_is_conditioned_on_its_text(tiny_model, tiny_session):
    """The UNet sees the first text up to the switch and the second after it, in the classifier-free-guidance batch
    (negative first), the negative prompt scheduled too; a prompt whose parts never change draws as before."""
    encoder = tiny_session.encoder
    seen = []
    hook = tiny_session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
        with_kwargs=True)
    try:
        base = dict(model=str(tiny_model[0]), steps=6, seed=3, width=64, height=64, cfg=5.0, sampler="Euler")
        txt2img(GenerateSettings(prompt="a [photo of a cat:red house:2]", negative="[blurry::4]", **base), tiny_session)
    finally:
        hook.remove()
    assert len(seen) == 6
    for step, embeds in enumerate(seen):
        positive, negative = encoder.encode_pair("a photo of a cat" if step <= 2 else "a red house",
                                                 "blurry" if step <= 4 else "", 1)
        assert torch.equal(embeds, torch.cat([negative.embeds, positive.embeds])), step
    plain = txt2img(GenerateSettings(prompt="a photo of a cat", **base), tiny_session)[0]
    never = txt2img(GenerateSettings(prompt="a [photo of a cat:photo of a cat:3]", **base), tiny_session)[0]
    assert torch.equal(torch.tensor(list(plain.image.getdata())), torch.tensor(list(never.image.getdata())))
    with pytest.raises(UserError, match="prompt editing"):
        from personae.config.animate import AnimateSettings
        from personae.inference.animate import animate

        animate(AnimateSettings(model=str(tiny_model[0]), motion_adapter="x", prompt="a [cat|dog]", steps=2))


def test_on_the_world_the_picture_follows_the_prompt_of_the_steps_that_settle_it(tmp_path):
    """"[a red circle on a blue background:a red square on a green background:K]" over 20 steps of Euler a: switched
    at step 2 the checker reads green squares, at step 18 blue circles. On the world model the last few steps settle
    both (measured, 8 seeds: switched at 1 to 12, 8 green squares; at 17, 5 green squares and 1 circle; at 18, 8 blue
    circles), so the switch decides what is drawn."""
    from personae.world.check import check
    from personae.world.model import write_world_model

    world = write_world_model(tmp_path / "world")
    circle, square = "a red circle on a blue background, close-up", "a red square on a green background, close-up"
    found = {}
    for when in (2, 18):
        settings = GenerateSettings(model=str(world), prompt=f"[{circle}:{square}:{when}]", steps=20, seed=0,
                                    batch_size=8, sampler="Euler a")
        found[when] = [(f.shape, f.background) for f in (check(g.image) for g in txt2img(settings))]
    assert found[2].count(("square", "green")) >= 6 and found[18].count(("circle", "blue")) >= 6, found
