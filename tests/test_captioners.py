"""Model captioners on tiny real models, offline: a WD14-style ONNX tagger authored here with the onnx package, and a
tiny random Florence-2 built from transformers' own classes with a tokenizer written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.errors import UserError

# selected_tags.csv rows (name, category) and each tag's probability on an all-red and an all-blue picture.
TAGS = [("general", 9, 0.8, 0.2), ("explicit", 9, 0.1, 0.7), ("red_theme", 0, 0.9, 0.1),
        ("blue_theme", 0, 0.1, 0.95), ("^_^", 0, 0.6, 0.2), ("solo", 0, 0.5, 0.7),
        ("hatsune_miku", 4, 0.88, 0.8), ("simple_background", 0, 0.97, 0.96), ("weak_tag", 0, 0.3, 0.4)]
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def write_tagger(folder: Path, side: int = 32, tags=TAGS) -> Path:
    """A WD14-shaped ONNX tagger: [1, side, side, 3] BGR 0-255 -> mean colour -> MatMul -> Sigmoid -> [1, N].

    Its weights make a picture of one plain colour give exactly the probabilities in TAGS."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3, len(tags)), np.float32)  # rows: mean B, G, R (0-1)
    for i, (_, _, p_red, p_blue) in enumerate(tags):
        weights[0, i], weights[2, i] = _logit(p_blue), _logit(p_red)
    nodes = [helper.make_node("Div", ["input_1:0", "scale"], ["unit"]),
             helper.make_node("ReduceMean", ["unit", "axes"], ["mean"], keepdims=0),
             helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])]
    graph = helper.make_graph(
        nodes, "tiny_tagger",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["batch", len(tags)])],
        [numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "axes"), numpy_helper.from_array(weights, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # taggers: IR 7-9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},{1000 - i}" for i, (name, cat, *_) in enumerate(tags)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder


def _captions(tagger_dir: Path, **settings) -> list[str]:
    from personae.models.captioners import load_captioner

    tagger = load_captioner(f"wd14:{tagger_dir}", settings=PrepareSettings(**settings))
    return tagger.caption([Image.new("RGB", (40, 40), RED), Image.new("RGB", (40, 40), BLUE)], [Path("a"), Path("b")])


def test_wd14_tagger_thresholds_ratings_underscores_and_undesired_tags(tmp_path):
    tagger = write_tagger(tmp_path / "tagger")
    # red: simple_background .97, red_theme .9, hatsune_miku .88 (character, over .85), ^_^ .6, solo .5; weak_tag .3
    # is under .35. blue: simple_background .96, blue_theme .95, solo .7, weak_tag .4; hatsune_miku .8 is a
    # character under .85. Ratings are left out; the kaomoji keeps its underscore.
    assert _captions(tagger) == ["simple background, red theme, hatsune miku, ^_^, solo",
                                 "simple background, blue theme, solo, weak tag"]
    assert _captions(tagger, undesired_tags="simple background, solo", rating_tags=True) == [
        "general, red theme, hatsune miku, ^_^", "explicit, blue theme, weak tag"]
    assert _captions(tagger, keep_underscores=True, tag_threshold=0.5, character_threshold=0.75, max_tags=3) == [
        "simple_background, red_theme, hatsune_miku", "simple_background, blue_theme, hatsune_miku"]
    # the white square padding counts: a thin red strip on white reads as mostly white (no colour tag)
    wide = Image.new("RGB", (64, 4), RED)
    from personae.models.wd14 import WD14Tagger

    probs = WD14Tagger.load(str(tagger)).probabilities([wide])[0]
    assert probs[2] < 0.9 and probs[3] > 0.1  # between the pure-red and the all-white probabilities


def _write_images(src: Path) -> None:
    src.mkdir()
    Image.new("RGB", (64, 64), RED).save(src / "IMG_0001.png")
    Image.new("RGB", (64, 64), BLUE).save(src / "IMG_0002.png")


def test_prepare_cli_captions_with_a_wd14_tagger_folder(tmp_path):
    tagger = write_tagger(tmp_path / "tagger")
    _write_images(tmp_path / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "personae", "prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--quiet",
           "--resolution", "64", "--captioner", f"wd14:{tagger}", "--undesired-tags", "simple background",
           "--trigger", "sks", "--template", "{trigger}, {caption}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    texts = {p.read_text().strip() for p in (tmp_path / "out" / "images").glob("*.txt")}
    assert texts == {"sks, red theme, hatsune miku, ^_^, solo", "sks, blue theme, solo, weak tag"}
    assert "--tag-threshold" in subprocess.run([sys.executable, "-m", "personae", "prepare", "--help"],
                                               capture_output=True, text=True, env=env).stdout


def test_wd14_tagger_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    from personae.models.captioners import load_captioner

    tagger = write_tagger(tmp_path / "tagger")
    (tagger / "selected_tags.csv").rename(tagger / "tags.csv")
    with pytest.raises(UserError, match="no selected_tags.csv") as err:
        load_captioner(f"wd14:{tagger}")
    assert "download both" in err.value.fix
    short = write_tagger(tmp_path / "short", tags=TAGS[:-1])
    (short / "model.onnx").write_bytes((tagger / "model.onnx").read_bytes())  # 9 outputs, 8 tags
    with pytest.raises(UserError, match="gives 9 tag probabilities but its selected_tags.csv lists 8"):
        load_captioner(f"wd14:{short}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(UserError, match="SmilingWolf/wd-nobody-tagger-v3") as err:
        load_captioner("wd14:SmilingWolf/wd-nobody-tagger-v3")
    assert time.monotonic() - start < 5 and "wd14:./folder" in err.value.fix
    with pytest.raises(UserError, match="was not found"):
        load_captioner(f"wd14:{tmp_path / 'missing'}")
    with pytest.raises(UserError, match="names no tagger"):
        load_captioner("wd14:")


# -- Florence-2 -------------------------------------------------------------------------------------------------

def write_florence(folder: Path, seed: int = 0) -> Path:
    """A tiny random Florence2ForConditionalGeneration + Florence2Processor (a byte-level BART tokenizer over
    printable ASCII, a 16 px CLIP image processor), saved as a transformers folder."""
    import torch
    from transformers import BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2Processor
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.florence2 import Florence2ForConditionalGeneration

    byte_chars = bytes_to_unicode()
    chars = [byte_chars[b] for b in range(32, 127)]  # space (as "Ġ") and printable ASCII: captions stay readable
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *chars, "<mask>"])}
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"height": 16, "width": 16}, do_center_crop=False)
    image_processor.image_seq_length = 17  # (16 / 4)^2 patches + 1 temporal token
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    # weights drawn wider than the usual 0.02 so that what is generated depends on the image and the prompt
    text = dict(model_type="bart", vocab_size=len(tokenizer), max_position_embeddings=320, d_model=32,
                encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                decoder_attention_heads=2, bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
                init_std=0.3)
    vision = dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                  embed_dim=[16], num_heads=[1], num_groups=[1], projection_dim=32, drop_path_rate=0.0,
                  initializer_range=0.3)
    torch.manual_seed(seed)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id,
                             initializer_range=0.3)
    model = Florence2ForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_florence2_captions_through_transformers_native_classes(tmp_path):
    import torch
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    from personae.models.captioners import TransformersCaptioner, load_captioner

    folder = write_florence(tmp_path / "florence")
    images = [Image.new("RGB", (40, 30), RED), Image.radial_gradient("L").convert("RGB")]
    paths = [Path("a.png"), Path("b.png")]
    captioner = load_captioner(str(folder))
    assert isinstance(captioner, TransformersCaptioner) and captioner.prompt == "<DETAILED_CAPTION>"
    assert captioner.max_new_tokens == 256  # room for a whole paragraph; below, 24 tokens keep the test quick
    assert load_captioner(str(folder), settings=PrepareSettings(caption_task="<CAPTION>")).prompt == "<CAPTION>"

    def florence(task="<DETAILED_CAPTION>"):
        return TransformersCaptioner(str(folder), max_new_tokens=24, florence_task=task)

    captions = florence().caption(images, paths)
    assert captions == florence().caption(images, paths)  # deterministic
    assert all(isinstance(c, str) and c.isprintable() for c in captions)
    assert not any(s in c for c in captions for s in ("<s>", "</s>", "<pad>", "<image>", "CAPTION", "Describe"))

    # the task prompt reaches the model: each task's caption is what the model generates from that task's prompt
    processor = AutoProcessor.from_pretrained(folder)
    model = Florence2ForConditionalGeneration.from_pretrained(folder).eval()
    prompts = {}
    short = florence("<CAPTION>")
    for task, got in (("<CAPTION>", short.caption(images, paths)), ("<DETAILED_CAPTION>", captions)):
        inputs = processor(images=images, text=[task] * 2, return_tensors="pt")
        prompts[task] = inputs["input_ids"]
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        expected = [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]
        assert got == expected
    assert prompts["<CAPTION>"].shape != prompts["<DETAILED_CAPTION>"].shape  # two different prompts went in
    assert captions[0] != captions[1] and short.caption(images, paths) != captions  # image and task both count
    assert processor.batch_decode(prompts["<DETAILED_CAPTION>"][:, 17:], skip_special_tokens=True)[0] == \
        "Describe in detail what is shown in the image."


def test_remote_code_only_checkpoints_are_refused(tmp_path):
    from personae.models.captioners import load_captioner

    original = tmp_path / "Florence-2-base"  # Microsoft's first upload: DaViT vision tower, auto_map code
    original.mkdir()
    (original / "config.json").write_text(json.dumps({
        "model_type": "florence2", "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config"},
        "vision_config": {"model_type": "davit"}}))
    with pytest.raises(UserError, match="trust_remote_code") as err:
        load_captioner(str(original))
    assert "florence-community/Florence-2-base" in err.value.fix
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "my_captioner", "auto_map": {}}))
    with pytest.raises(UserError, match='"my_captioner".*never runs code'):
        load_captioner(str(custom))


def test_tag_cleaning_keeps_kaomoji_and_underscores_on_request():
    from personae.data.captions import clean_tags

    assert clean_tags("long_hair, ^_^, long hair, >_<") == "long hair, ^_^, >_<"
    assert clean_tags("long_hair, ^_^", underscores_to_spaces=False) == "long_hair, ^_^"
    assert clean_tags("^_^") == "^_^" and clean_tags("hatsune_miku") == "hatsune miku"
