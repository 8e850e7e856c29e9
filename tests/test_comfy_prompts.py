"""ComfyUI's ways of joining prompts, read from its PNGs (media/comfy_graph.py): ConditioningCombine as A1111's AND
with weights 1/n, ConditioningConcat as BREAK.

The reading is checked as text, and the picture it draws against ComfyUI's sampling written out by hand: the
sampler averages the predictions of the combined conds (comfy/samplers.py, calc_cond_batch), and a concat is the
two encodings one after the other (nodes.py, ConditioningConcat).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from test_comfy_png import comfy_png, default_graph, not_applied, read, refusal

from personae.inference.samplers import get_sampler


def _encode(graph: dict, node: str, text: str, clip=("4", 1)) -> str:
    graph[node] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": list(clip)}}
    return node


def _join(graph: dict, node: str, kind: str, first: str, second: str) -> str:
    names = ("conditioning_1", "conditioning_2") if kind == "ConditioningCombine" else \
        ("conditioning_to", "conditioning_from")
    graph[node] = {"class_type": kind, "inputs": {names[0]: [first, 0], names[1]: [second, 0]}}
    return node


def combined_graph(**ksampler) -> dict:
    """positive: Combine("a photo of a cat", Concat("a red house", "watercolor")); negative: Concat("lowres",
    "blurry")."""
    graph = default_graph(**ksampler)
    _encode(graph, "30", "a red house")
    _encode(graph, "31", "watercolor")
    _join(graph, "32", "ConditioningConcat", "30", "31")
    _join(graph, "33", "ConditioningCombine", "6", "32")
    graph["7"]["inputs"]["text"] = "lowres"
    _encode(graph, "34", "blurry")
    _join(graph, "35", "ConditioningConcat", "7", "34")
    graph["3"]["inputs"]["positive"], graph["3"]["inputs"]["negative"] = ["33", 0], ["35", 0]
    return graph


def test_combine_is_and_at_one_over_n_and_concat_is_break(tmp_path):
    data = read(tmp_path, combined_graph())
    assert data["prompt"] == "a photo of a cat :0.5 AND a red house BREAK watercolor :0.5"
    assert data["negative"] == "lowres BREAK blurry"
    # the parts are one and two texts long: ComfyUI runs each over its own tokens, A1111's AND pads the shorter
    assert not_applied(tmp_path, combined_graph()) == (
        "KSampler node 3 combines prompts joined from different numbers of texts (ConditioningConcat), so of "
        "different lengths: ComfyUI runs each over its own tokens, personae (as A1111's AND) pads the shorter by "
        "repeating its last token, so the picture differs a little")  # and no "AND in the prompts" note

    three = combined_graph()
    _encode(three, "36", "a dog")
    _join(three, "37", "ConditioningCombine", "33", "36")
    three["3"]["inputs"]["positive"] = ["37", 0]
    assert read(tmp_path, three)["prompt"] == ("a photo of a cat :0.3333333333333333 AND a red house BREAK watercolor "
                                               ":0.3333333333333333 AND a dog :0.3333333333333333")

    # a concat onto combined conds appends to each; from combined conds only the first is appended (as ComfyUI)
    onto = combined_graph()
    _join(onto, "38", "ConditioningConcat", "33", "34")
    _join(onto, "39", "ConditioningConcat", "6", "33")
    onto["3"]["inputs"]["positive"] = ["38", 0]
    assert read(tmp_path, onto)["prompt"] == ("a photo of a cat BREAK blurry :0.5 AND a red house BREAK watercolor "
                                              "BREAK blurry :0.5")
    onto["3"]["inputs"]["positive"] = ["39", 0]
    assert read(tmp_path, onto)["prompt"] == "a photo of a cat BREAK a photo of a cat"

    # A1111's words typed in a text are still said (the AND and BREAK personae writes are not)
    graph = combined_graph()
    graph["6"]["inputs"]["text"] = "a [cat:dog:0.5]"
    assert "[...], BREAK or AND in the prompts: plain text to ComfyUI" in not_applied(tmp_path, graph)


def test_joins_personae_cannot_draw_are_refused_by_node(tmp_path):
    graph = combined_graph()
    _join(graph, "40", "ConditioningCombine", "7", "34")
    graph["3"]["inputs"]["negative"] = ["40", 0]
    message = refusal(tmp_path, graph)
    assert "combines 2 conditionings into KSampler node 3's negative prompt" in message
    assert "ConditioningConcat (A1111's BREAK)" in message and "\n" not in message.split("\n\n")[0]

    skipped = combined_graph()  # one part through clip skip 2, the other not
    skipped["12"] = {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["4", 1]}}
    skipped["31"]["inputs"]["clip"] = ["12", 0]
    assert "joins texts encoded through different CLIP chains (clip skip or LoRAs) in ConditioningConcat node 32" \
        in refusal(tmp_path, skipped)

    controlled = combined_graph()  # a ControlNet on one part only: personae controls every part alike
    controlled["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.pth"}}
    controlled["21"] = {"class_type": "LoadImage", "inputs": {"image": "pose.png", "upload": "image"}}
    controlled["22"] = {"class_type": "ControlNetApply", "inputs": {
        "conditioning": ["6", 0], "control_net": ["20", 0], "image": ["21", 0], "strength": 1.0}}
    controlled["33"]["inputs"]["conditioning_1"] = ["22", 0]
    assert "has ControlNetApply node 22 on the sampler's path" in refusal(tmp_path, controlled)

    ranged = combined_graph()  # ComfyUI's prompt scheduling by noise level: not read
    ranged["41"] = {"class_type": "ConditioningSetTimestepRange", "inputs": {
        "conditioning": ["6", 0], "start": 0.0, "end": 0.5}}
    ranged["33"]["inputs"]["conditioning_1"] = ["41", 0]
    assert "ConditioningSetTimestepRange node 41" in refusal(tmp_path, ranged)


def _comfy_by_hand(session, conds: list[list[str]], negative: list[str], cfg: float, steps: int, seed: int,
                   size: int = 64) -> np.ndarray:
    """ComfyUI's sampling written out: each cond the concatenation of its texts' encodings, each through the UNet
    alone; the prediction uncond + cfg * (mean of the conds' predictions - uncond); Euler on ComfyUI's normal
    schedule (personae's Euler, quantized as ComfyUI's timesteps are); then decoded."""
    pipe, encoder = session.pipe, session.encoder
    scheduler = get_sampler("Euler").make(session.base_scheduler, {"quantize": True})
    scheduler.set_timesteps(steps)

    def encoded(texts):
        return torch.cat([encoder.encode(text).embeds for text in texts], dim=1)

    uncond_embeds, cond_embeds = encoded(negative), [encoded(texts) for texts in conds]
    cell = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, size // cell, size // cell)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            uncond = pipe.unet(x, t, encoder_hidden_states=uncond_embeds).sample
            cond = torch.stack([pipe.unet(x, t, encoder_hidden_states=e).sample for e in cond_embeds]).mean(0)
            latents = scheduler.step(uncond + cfg * (cond - uncond), t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0], dtype=np.int16)


def test_a_combined_and_concatenated_graph_draws_comfyuis_average(tiny_model, tiny_session, tmp_path):
    """Both parts two texts long (154 tokens), the negative prompt one (77): the UNet sees every cond at its own
    length (--pad-conds off runs the negative rows apart); the picture from the PNG is the hand-written ComfyUI
    loop's within one level of 255 (one batch there, one cond at a time here), and differs from either part
    alone."""
    from personae.cli.main import main

    graph = combined_graph(steps=4, cfg=5.0, sampler_name="euler", scheduler="normal", seed=3)
    graph["5"]["inputs"].update(width=64, height=64)
    _encode(graph, "36", "at night")
    _join(graph, "37", "ConditioningConcat", "6", "36")
    graph["33"]["inputs"]["conditioning_1"] = ["37", 0]
    graph["3"]["inputs"]["negative"] = ["7", 0]  # one text: the UNet runs it apart, over its own 77 tokens
    png = comfy_png(tmp_path / "comfy.png", graph)
    assert not_applied(tmp_path, graph) == ""
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--out", str(tmp_path / "a")]) == 0
    [drawn] = sorted((tmp_path / "a").glob("*.png"))
    drawn = np.asarray(Image.open(drawn), dtype=np.int16)
    conds = [["a photo of a cat", "at night"], ["a red house", "watercolor"]]
    by_hand = _comfy_by_hand(tiny_session, conds, ["lowres"], cfg=5.0, steps=4, seed=3)
    assert np.abs(drawn - by_hand).max() <= 1
    for alone in conds:
        assert np.abs(_comfy_by_hand(tiny_session, [alone], ["lowres"], 5.0, 4, 3) - by_hand).max() > 10


def test_weighted_words_are_weighted_as_comfyui_weights_them(tiny_session, tmp_path):
    """Emphasis "ComfyUI" (set for every ComfyUI picture): a weighted token's embedding is the empty prompt's at its
    place plus w times the difference (comfy/sd1_clip.py), the text encoder's own outputs computed here; the other
    tokens as encoded. Not A1111's Original or No norm."""
    encoder, text_encoder = tiny_session.encoder, tiny_session.pipe.text_encoder
    prompt = "a photo of a (cat:1.5), ((red))"
    [chunk] = encoder.token_chunks(prompt)
    assert sorted({round(w, 4) for _, w in chunk}) == [1.0, 1.21, 1.5]
    tok = encoder.tokenizer
    ids = [tok.bos_token_id] + [t for t, _ in chunk] + [tok.eos_token_id]
    ids += [tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id] * (77 - len(ids))
    empty = [tok.bos_token_id, tok.eos_token_id] + [ids[-1]] * 75
    weights = torch.tensor([1.0] + [w for _, w in chunk] + [1.0] * (76 - len(chunk)))[None, :, None]
    with torch.no_grad():
        z, z_empty = (text_encoder(torch.tensor([x])).last_hidden_state for x in (ids, empty))
    by_hand = torch.where(weights != 1, z_empty + weights * (z - z_empty), z)
    comfy = encoder.encode(prompt, emphasis="ComfyUI").embeds
    assert torch.allclose(comfy, by_hand, atol=1e-6)
    assert torch.equal(encoder.encode("a photo of a cat", emphasis="ComfyUI").embeds,
                       encoder.encode("a photo of a cat").embeds)  # nothing weighted: the text as encoded
    for other in ("Original", "No norm"):
        assert (encoder.encode(prompt, emphasis=other).embeds - comfy).abs().max() > 1e-3, other
    graph = default_graph()
    graph["6"]["inputs"]["text"] = prompt
    assert read(tmp_path, graph)["emphasis"] == "ComfyUI" and not_applied(tmp_path, graph) == ""
