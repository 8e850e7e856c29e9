"""kohya's training config (sd-scripts --config_file, as the kohya_ss GUI writes it) read as a personae job."""

import json

import numpy as np
import pytest
from PIL import Image

from personae.errors import UserError
from personae.jobs.kohya_job import kohya_job, kohya_settings
from personae.jobs.train import load_job

# a LoRA config as the kohya_ss GUI saves it beside its run: every switch written, most off
GUI_CONFIG = """
bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
cache_latents_to_disk = true
caption_dropout_every_n_epochs = 0
caption_dropout_rate = 0.05
caption_extension = ".txt"
clip_skip = 2
color_aug = false
dynamo_backend = "no"
enable_bucket = true
flip_aug = false
full_fp16 = false
gradient_accumulation_steps = 1
huber_c = 0.1
huber_schedule = "snr"
ip_noise_gamma = 0.1
keep_tokens = 1
learning_rate = 0.0001
logging_dir = "/home/me/kohya/log"
loss_type = "l2"
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
lr_warmup_steps = 0
max_bucket_reso = 2048
max_data_loader_n_workers = 0
max_grad_norm = 1
max_timestep = 1000
max_token_length = 75
max_train_steps = {steps}
min_bucket_reso = 256
min_snr_gamma = 5
mixed_precision = "no"
multires_noise_discount = 0.3
multires_noise_iterations = 6
network_alpha = 8
network_args = [ "loraplus_lr_ratio=4",]
network_dim = 8
network_module = "networks.lora"
noise_offset = 0.05
optimizer_args = [ "weight_decay=0.05",]
optimizer_type = "AdamW"
output_dir = "{out}"
output_name = "sks_man"
persistent_data_loader_workers = false
pretrained_model_name_or_path = "{model}"
prior_loss_weight = 1
random_crop = false
resolution = "64,64"
save_every_n_epochs = 1
save_model_as = "safetensors"
save_precision = "fp16"
scale_weight_norms = 0
seed = 1234
shuffle_caption = true
text_encoder_lr = 5e-05
train_batch_size = 2
train_data_dir = "{data}"
unet_lr = 0.0002
xformers = true
"""


def _kohya_folder(root):
    """kohya's layout: a folder per concept, named repeats_token class, captions as .txt beside the images."""
    folder = root / "img" / "10_sks man"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("sks man, smiling, outdoors")
    return root / "img"


def _config(tmp_path, text: str = GUI_CONFIG, **values):
    path = tmp_path / "config_lora.toml"
    fill = {"steps": 2, "out": tmp_path / "model", "model": tmp_path / "tiny", "data": tmp_path / "img", **values}
    path.write_text(text.format(**{k: str(v) for k, v in fill.items()}))
    return path


def test_every_key_of_a_gui_config_is_placed_or_said_unneeded(tmp_path):
    job, notes = kohya_job(_config(tmp_path))
    t, lora, d = job["train"], job["lora"], job["data"]
    assert job["base_model"] == str(tmp_path / "tiny") and d["path"] == str(tmp_path / "img")
    assert job["output"] == str(tmp_path / "model" / "sks_man") and job["name"] == "sks_man"
    assert job["output_dtype"] == "fp16" and d["crop"] == "none"  # enable_bucket: kohya-style buckets
    assert (lora["rank"], lora["alpha"], lora["variant"], lora["loraplus_lr_ratio"]) == (8, 8.0, "lora", 4.0)
    assert "ff.net.0.proj" in lora["target_modules"] and "conv1" not in lora["target_modules"]  # kohya's targets
    assert lora["text_encoder"] is True and lora["text_encoder_lr"] == 5e-5 and t["learning_rate"] == 2e-4
    assert (t["steps"], t["batch_size"], t["seed"], t["clip_skip"], t["min_snr_gamma"]) == (2, 2, 1234, 2, 5)
    assert (t["lr_scheduler"], t["lr_scheduler_num_cycles"], t["weight_decay"]) == ("cosine_with_restarts", 3, 0.05)
    assert (t["multires_noise_iterations"], t["ip_noise_gamma"], t["noise_offset"]) == (6, 0.1, 0.05)
    assert t["cache_latents"] == "disk" and t["resolution"] == 64
    assert (d["shuffle_tags"], d["keep_tokens"], d["caption_dropout"]) == (True, 1, 0.05)
    said = " ".join(notes)
    for key in ("xformers", "logging_dir", "save_every_n_epochs", "save_model_as"):
        assert key in said
    assert "max_data_loader_n_workers" not in said  # 0: nothing to say


@pytest.mark.parametrize("line, named", [
    ("sdxl = true", "sdxl = True (personae trains SD-1.5 models)"),
    ("random_crop = true", "random_crop"),
    ("optimizer_type = \"DAdaptAdam\"", "optimizer_type"),
    ("a_new_kohya_option = 3", "a_new_kohya_option (not a setting personae knows)"),
    ("network_args = [ \"rank_dropout=0.1\",]", "network_args rank_dropout=0.1"),
])
def test_what_personae_cannot_train_as_asked_is_named(tmp_path, line, named):
    key = line.split(" =")[0]
    text = "\n".join(l for l in GUI_CONFIG.splitlines() if not l.startswith(key + " ")) + "\n" + line + "\n"
    with pytest.raises(UserError) as err:
        kohya_job(_config(tmp_path, text))
    assert named in str(err.value) and "every other key is read" in str(err.value)


def test_kohyas_default_caption_extension_and_its_network_forms(tmp_path):
    text = "\n".join(l for l in GUI_CONFIG.splitlines() if not l.startswith("caption_extension"))
    assert kohya_job(_config(tmp_path, text))[0]["data"]["caption_extension"] == ".caption"  # sd-scripts' default
    with pytest.raises(UserError, match="caption_extension = '.json' .personae reads .txt or .caption"):
        kohya_job(_config(tmp_path, text + '\ncaption_extension = ".json"\n'))
    def network(args: str, module: str = "networks.lora"):
        swapped = GUI_CONFIG.replace('network_args = [ "loraplus_lr_ratio=4",]', f"network_args = [ {args} ]")
        swapped = swapped.replace('network_module = "networks.lora"', f'network_module = "{module}"')
        return kohya_job(_config(tmp_path, swapped))[0]["lora"]

    locon = network('"conv_dim=4", "conv_alpha=2"')
    assert (locon["variant"], locon["conv_rank"], locon["conv_alpha"]) == ("locon", 4, 2.0)
    assert network('"algo=loha"', "lycoris.kohya")["variant"] == "loha"
    assert network('"algo=lora", "dora_wd=True"', "lycoris.kohya")["variant"] == "dora"
    dims = ",".join(["4"] * 12 + ["8"] + ["2"] * 12)
    blocks = network(f'"block_dims={dims}"')["block_ranks"]
    assert (blocks["IN00"], blocks["M00"], blocks["OUT11"]) == (4, 8, 2)
    with pytest.raises(UserError, match="block_dims has 3 values"):
        network('"block_dims=1,2,3"')
    with pytest.raises(UserError, match="not one personae trains"):
        network('"algo=ia3"', "lycoris.kohya")
    with pytest.raises(UserError, match="conv_dim / conv_alpha with algo=loha"):  # not dropped silently
        network('"algo=loha", "conv_dim=4"', "lycoris.kohya")
    for line in ('network_dim = "eight"', 'resolution = "big"'):  # one paragraph, not a traceback
        key = line.split(" =")[0]
        text = "\n".join(l for l in GUI_CONFIG.splitlines() if not l.startswith(key + " ")) + "\n" + line + "\n"
        with pytest.raises(UserError, match="holds a value that is not what kohya takes there"):
            kohya_job(_config(tmp_path, text))


def test_a_kohya_config_trains_and_its_lora_carries_kohyas_names(tmp_path, tiny_model):
    from safetensors import safe_open

    from personae.jobs.train import run_training

    _kohya_folder(tmp_path)
    config = _config(tmp_path, model=tiny_model[0])
    config.write_text(config.read_text() + 'training_comment = "trigger: sks man"\nmetadata_author = "me"\n'
                      'metadata_license = "CreativeML-OpenRAIL-M"\n')
    notes = []
    job = load_job(config, ["train.verify_exports=false", "train.validation.steps=1"], notes)
    assert job.lora.rank == 8 and job.train.clip_skip == 2 and notes
    result = run_training(job)
    assert result.steps == 2 and (tmp_path / "model" / "sks_man").is_dir()
    with safe_open(str(tmp_path / "model" / "sks_man" / "sks_man.safetensors"), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert any("_ff_net_0_proj.lora_up" in k for k in keys) and any(k.startswith("lora_te_") for k in keys)
    assert not any("_resnets_" in k for k in keys)  # kohya's networks.lora without conv_dim: no resnet layers
    assert (meta["ss_network_dim"], meta["ss_clip_skip"], meta["ss_multires_noise_iterations"]) == ("8", "2", "6")
    assert (meta["ss_training_comment"], meta["modelspec.author"], meta["modelspec.license"]) == (
        "trigger: sks man", "me", "CreativeML-OpenRAIL-M")  # kohya's metadata keys, where kohya writes them
    assert meta["modelspec.title"] == "sks_man"  # no metadata_title: the output name, as kohya titles it
    # the kohya folder's captions, read as kohya reads them: the .txt as written, "sks man" not put before it again
    assert json.loads(meta["ss_tag_frequency"]) == {"img": {"outdoors": 2, "sks man": 2, "smiling": 2}}
    prepared = (tmp_path / "model" / "sks_man" / "prepared" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["caption"] for line in prepared] == ["sks man, smiling, outdoors"] * 2


def test_the_command_line_refuses_a_config_it_cannot_train_in_one_paragraph(tmp_path, capsys):
    from personae.cli.main import main

    text = GUI_CONFIG.replace("full_fp16 = false", "full_fp16 = true")
    code = main(["train", str(_config(tmp_path, text))])
    err = capsys.readouterr().err
    said = " ".join(err.split())
    assert code == 2 and "full_fp16 = True (trained weights in fp16 need kohya's own gradient scaler" in said
    assert "Traceback" not in err
    assert not (tmp_path / "model").exists()


def test_noise_offset_shapes_max_norm_and_epoch_caption_dropout_are_read(tmp_path):
    job, _ = kohya_settings({"pretrained_model_name_or_path": "./m", "train_data_dir": "./d",
                             "caption_extension": ".txt", "noise_offset": 0.05, "noise_offset_random_strength": True,
                             "adaptive_noise_scale": 0.01, "scale_weight_norms": 1.0,
                             "caption_dropout_every_n_epochs": 3, "weighted_captions": True,
                             "zero_terminal_snr": True, "no_half_vae": True, "full_bf16": True,
                             "mixed_precision": "bf16"}, tmp_path,
                            "config.toml")
    t = job["train"]
    assert (t["noise_offset"], t["noise_offset_random_strength"], t["adaptive_noise_scale"]) == (0.05, True, 0.01)
    assert t["scale_weight_norms"] == 1.0 and job["data"]["caption_dropout_every_n_epochs"] == 3
    assert t["weighted_captions"] is True and t["zero_terminal_snr"] is True and t["no_half_vae"] is True
    assert t["full_bf16"] is True and t["mixed_precision"] == "bf16"


def _images(folder, count, captions=()):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(count):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        if i < len(captions):
            (folder / f"{i}.txt").write_text(captions[i] + "\n")
    return folder


DATASET = """
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 64
batch_size = 2
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "{me}"
  num_repeats = 10
  class_tokens = "sks man"

  [[datasets.subsets]]
  image_dir = "style"
  num_repeats = 2

  [[datasets.subsets]]
  image_dir = "{reg}"
  is_reg = true
  class_tokens = "man"
"""


def _dataset_config(tmp_path, text=DATASET, **extra):
    _images(tmp_path / "me", 2, ["sks man, smiling"])  # one image captioned, one by its class tokens
    _images(tmp_path / "style", 1, ["pencil drawing"])
    _images(tmp_path / "reg", 3)
    path = tmp_path / "dataset.toml"
    path.write_text(text.format(me=tmp_path / "me", reg=tmp_path / "reg"))
    return {**_dataset_config_keys(), **extra}


def _dataset_config_keys():
    return {"pretrained_model_name_or_path": "./m", "dataset_config": "dataset.toml", "max_train_steps": 2,
            "train_data_dir": "./ignored"}


def test_a_dataset_config_becomes_subsets_with_their_repeats_and_class_tokens(tmp_path):
    """kohya's dataset_config: each training subset a data.subsets entry (its num_repeats, its class_tokens for
    images without a .txt), [general] / [[datasets]] settings as the job's, the is_reg subset the class images."""
    job, notes = kohya_settings(_dataset_config(tmp_path), tmp_path, "config.toml")
    d, t, db = job["data"], job["train"], job["dreambooth"]
    assert d["subsets"] == [{"path": str(tmp_path / "me"), "repeats": 10, "caption": "sks man"},
                            {"path": "style", "repeats": 2}]  # as written: the job reads it relative to the config
    assert (d["sidecars"], d["shuffle_tags"], d["keep_tokens"], d["crop"]) == ("verbatim", True, 1, "none")
    assert (t["resolution"], t["batch_size"]) == (64, 2)
    assert db == {"prior_preservation": True, "class_data_dir": str(tmp_path / "reg"), "num_class_images": 3,
                  "class_prompt": "man"}
    import os

    here = os.getcwd()
    try:  # read relative to the config's folder, wherever personae runs
        os.chdir("/")
        (tmp_path / "config.toml").write_text("\n".join(f"{k} = {json.dumps(v)}"
                                                        for k, v in _dataset_config_keys().items()) + "\n")
        loaded = load_job(tmp_path / "config.toml")
    finally:
        os.chdir(here)
    assert [s.path for s in loaded.data.subsets] == [str(tmp_path / "me"), str(tmp_path / "style")]
    assert any("train_data_dir (dataset_config is given" in n for n in notes)
    from personae.training.setup import data_sources, planned_captions, raw_folder_settings

    captions = [planned_captions(s.path, raw_folder_settings(loaded, s)) for _, s in data_sources(loaded)]
    assert captions == [["sks man, smiling", "sks man"], ["pencil drawing"]]


@pytest.mark.parametrize("change, named", [
    (("  num_repeats = 2\n", "  num_repeats = 2\n  shuffle_caption = false\n"),
     "shuffle_caption differs between subsets (False, True)"),
    (("  num_repeats = 2\n", "  num_repeats = 2\n  color_aug = true\n"), "color_aug = True (not available)"),
    (("  num_repeats = 2\n", "  num_repeats = 2\n  sparkle = 1\n"), "subsets sparkle (not a dataset_config"),
    (("batch_size = 2\n", "batch_size = 2\n\n[[datasets]]\nresolution = 128\n  [[datasets.subsets]]\n"
                            "  image_dir = \"style\"\n"), "datasets of different resolution"),
    (("  class_tokens = \"man\"\n", "  class_tokens = \"man\"\n\n  [[datasets.subsets]]\n  image_dir = "
                                      "\"style\"\n  is_reg = true\n"), "2 subsets with is_reg"),
    (("  num_repeats = 2\n", '  num_repeats = 2\n  caption_extension = ".caption"\n'),
     "caption_extension differs between subsets (.caption, .txt)"),
    (('caption_extension = ".txt"', 'caption_extension = ".md"'), "caption_extension = '.md'"),
])
def test_what_a_dataset_config_asks_that_personae_cannot_is_named(tmp_path, change, named):
    text = DATASET.replace(*change)
    assert text != DATASET
    with pytest.raises(UserError) as err:
        kohya_settings(_dataset_config(tmp_path, text), tmp_path, "config.toml")
    assert named in str(err.value)


def test_a_refusal_every_subset_inherits_is_named_once(tmp_path):
    text = DATASET.replace("[general]\n", "[general]\ncolor_aug = true\n")
    with pytest.raises(UserError) as err:
        kohya_settings({**_dataset_config(tmp_path, text), "color_aug": True}, tmp_path, "config.toml")
    assert str(err.value).count("color_aug = True (not available)") == 1


def test_a_missing_dataset_config_or_an_empty_reg_folder_says_so(tmp_path):
    with pytest.raises(UserError, match="dataset_config .*nothing.toml does not exist"):
        kohya_settings({"pretrained_model_name_or_path": "m", "dataset_config": "nothing.toml"}, tmp_path, "c.toml")
    (tmp_path / "reg" / "1_man").mkdir(parents=True)
    (tmp_path / "reg" / "1_woman").mkdir()
    config = {"pretrained_model_name_or_path": "m", "train_data_dir": "d", "caption_extension": ".txt",
              "reg_data_dir": "reg"}
    with pytest.raises(UserError, match="found 2 such folders"):
        kohya_settings(config, tmp_path, "c.toml")
    (tmp_path / "reg" / "1_woman").rmdir()
    with pytest.raises(UserError, match="reg_data_dir .*1_man holds no images"):
        kohya_settings(config, tmp_path, "c.toml")


def test_reg_data_dir_is_read_in_kohyas_layout(tmp_path):
    """kohya's reg_data_dir holds a `1_man` folder; its images are the class images, its words their caption."""
    _images(tmp_path / "reg" / "1_man", 2, ["a man, hat"])
    job, _ = kohya_settings({"pretrained_model_name_or_path": "m", "train_data_dir": "d", "caption_extension": ".txt",
                             "reg_data_dir": "reg"}, tmp_path, "c.toml")
    assert job["dreambooth"] == {"prior_preservation": True, "class_data_dir": "reg/1_man", "num_class_images": 2,
                                 "class_prompt": "man"}  # as written: the job reads it relative to the config


def test_a_dataset_config_trains_and_its_header_lists_each_folder(tmp_path, tiny_model):
    """Subsets train as one set: each prepared into the run, the header's ss_dataset_dirs naming each folder with
    its repeats and image count, the class images the is_reg folder's (nothing generated)."""
    from safetensors import safe_open

    from personae.jobs.train import run_training

    config = _dataset_config(tmp_path)
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**config, "pretrained_model_name_or_path":
                                                            str(tiny_model[0]), "output_dir": str(tmp_path / "out"),
                                                            "output_name": "me", "network_dim": 2,
                                                            "network_alpha": 2}.items())
    (tmp_path / "config.toml").write_text(text + "\n")
    job = load_job(tmp_path / "config.toml", ["train.verify_exports=false", "train.validation.steps=1"], [])
    result = run_training(job)
    assert result.steps == 2
    run = tmp_path / "out" / "me"
    assert sorted(p.name for p in (run / "prepared").iterdir()) == ["1", "2"] and not (run / "class_images").exists()
    with safe_open(str(run / "me.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ss_dataset_dirs"]) == {"me": {"n_repeats": 10, "img_count": 2},
                                                   "style": {"n_repeats": 2, "img_count": 1}}
    assert json.loads(meta["ss_tag_frequency"]) == {"me": {"sks man": 2, "smiling": 1},
                                                    "style": {"pencil drawing": 1}}
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"]) == ("22", "3")


def test_sample_prompt_options_become_the_validation_settings_or_are_said(tmp_path):
    """kohya's sample prompts file: the prompt before ' --'; --n / --s / --l / --d / --ss every line agrees on are
    the validation's negative prompt, steps, CFG, seed and sampler; what differs or has no place is said."""
    (tmp_path / "prompts.txt").write_text("# samples\n"
                                          "sks man, smiling --n lowres, blurry --s 28 --l 7.5 --d 42 --w 512\n"
                                          "sks man, hat --n lowres, blurry --s 28 --l 6 --d 42 --ss euler_a\n")
    job, notes = kohya_settings({"pretrained_model_name_or_path": "m", "train_data_dir": "d",
                                 "caption_extension": ".txt", "sample_prompts": "prompts.txt",
                                 "sample_sampler": "ddim"}, tmp_path, "c.toml")
    assert job["train"]["validation"] == {"prompts": ["sks man, smiling", "sks man, hat"], "negative": "lowres, blurry",
                                          "steps": 28, "cfg": 7.5, "seed": 42, "sampler": "DDIM"}
    said = " ".join(notes)
    assert "--l differs between prompts (one cfg serves every validation prompt: 7.5" in said
    assert "--ss differs" in said and "--w (validation images are drawn at the training size" in said


def test_the_validation_negative_prompt_reaches_the_pictures(tiny_session):
    import numpy as np

    from personae.config.train import ValidationSection
    from personae.training.validation import render_prompts

    s = tiny_session
    draw = [render_prompts(s.pipe, s.source, s.base_scheduler, ["a photo of a cat"],
                           ValidationSection(steps=2, negative=negative))[0] for negative in ("", "dog", "")]
    assert np.array_equal(np.asarray(draw[0]), np.asarray(draw[2]))
    assert not np.array_equal(np.asarray(draw[0]), np.asarray(draw[1]))
