"""A single-file checkpoint's prediction type and noise schedule, as A1111 (a .yaml beside it) and ComfyUI / Forge
(`v_pred` / `ztsnr` keys) say them: read when one loads, written when personae writes one."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.txt2img import txt2img
from personae.models.folders import save_pipeline_folder
from personae.models.original_layout import CONFIG_METADATA_KEY, save_single_file
from personae.models.resolve import ModelSource, load_pipeline, prediction_type, resolve_model
from personae.models.tiny import TINY_UNET, TINY_VAE, build_tiny_pipeline


def _v_prediction(pipe, zero_snr=True):
    """The pipeline with a v-prediction (zero-terminal-SNR) noise schedule, as personae world zero-snr has it."""
    config = {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    config.update(prediction_type="v_prediction", rescale_betas_zero_snr=zero_snr, timestep_spacing="trailing")
    pipe.register_modules(scheduler=type(pipe.scheduler).from_config(config))
    return pipe


def _sd_shaped(pipe):
    """The tiny pipeline with a UNet and VAE that LDM's classes can build (32 GroupNorm groups, whole channel
    multiples): what A1111 reads from a .yaml, at a size a test can afford."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        unet = type(pipe.unet)(**{**TINY_UNET, "norm_num_groups": 32, "block_out_channels": (32, 64, 64, 64)})
        vae = type(pipe.vae)(**{**TINY_VAE, "norm_num_groups": 32, "block_out_channels": (32, 32, 32, 32)})
    vae.register_to_config(scaling_factor=0.3)
    pipe.register_modules(unet=unet, vae=vae)
    return pipe


def _load(path):
    return load_pipeline(ModelSource("single_file", str(path), path.stem))


def _foreign(file, out, keys=(), drop_scheduler=True, drop_scale=False, header=None):
    """The same weights as another tool writes them: personae's header without its scheduler (and the VAE's
    latent scale; the architecture stays known, so the tiny model loads), and `keys` added as empty markers."""
    with safe_open(str(file), "pt") as fh:
        configs = json.loads(fh.metadata()[CONFIG_METADATA_KEY])
    if drop_scheduler:
        configs.pop("scheduler")
    if drop_scale:
        configs["vae"].pop("scaling_factor")
    tensors = {key: value for key, value in load_file(str(file)).items() if "." in key}  # no marker of its own
    tensors.update({key: torch.zeros(0) for key in keys})
    save_file(tensors, str(out), {CONFIG_METADATA_KEY: json.dumps(configs), **(header or {})})
    return out


def _draw(model, session=None, seed=3, **settings):
    settings = GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 4, "seed": seed,
                                   "width": 64, "height": 64, "sampler": "Euler", **settings})
    return txt2img(settings, session)[0]


def test_a_v_prediction_file_carries_comfyuis_keys_and_draws_as_its_folder(tmp_path):
    pipe = _v_prediction(build_tiny_pipeline(0))
    save_pipeline_folder(pipe, tmp_path / "folder")
    file = save_single_file(pipe, tmp_path / "v.safetensors")
    with safe_open(str(file), "pt") as fh:
        markers = {key: fh.get_slice(key).get_shape() for key in fh.keys() if "." not in key}
    assert markers == {"v_pred": [0], "ztsnr": [0]}  # what ComfyUI writes, and Forge reads for zero SNR
    with safe_open(str(file), "pt") as fh:
        assert fh.metadata()["modelspec.prediction_type"] == "v"  # kohya's model spec field
    assert not (tmp_path / "v.yaml").exists()  # GroupNorm of 8 groups: no LDM config can build the tiny UNet
    loaded = _load(file)
    assert loaded.scheduler.config.prediction_type == "v_prediction" and loaded.scheduler.config.rescale_betas_zero_snr
    from_folder, from_file = _draw(tmp_path / "folder"), _draw(file)
    assert np.array_equal(np.asarray(from_folder.image), np.asarray(from_file.image))
    assert "Noise Schedule: Zero Terminal SNR" in from_file.parameters  # as Forge writes it: A1111 needs the setting
    plain = build_tiny_pipeline(0)
    eps_file = save_single_file(plain, tmp_path / "eps.safetensors")
    with safe_open(str(eps_file), "pt") as fh:
        assert all("." in key for key in fh.keys())  # an epsilon model has no marker
        assert fh.metadata()["modelspec.prediction_type"] == "epsilon"
    save_pipeline_folder(plain, tmp_path / "eps")
    assert "Noise Schedule" not in _draw(tmp_path / "eps").parameters


def test_the_yaml_beside_a_v_prediction_file_builds_the_same_model_in_an_ldm_reader(tmp_path):
    """diffusers' reader of original configs (what A1111 and ComfyUI's "Load Checkpoint With Config" read) builds
    the UNet and VAE from the .yaml alone, with the same weights; parameterization says v."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    pipe = _v_prediction(_sd_shaped(build_tiny_pipeline(0)))
    file = save_single_file(pipe, tmp_path / "m.safetensors")
    config_path = tmp_path / "m.yaml"
    text = config_path.read_text()
    assert text.startswith("# written by personae for m.safetensors")
    params = yaml.safe_load(text)["model"]["params"]
    assert (params["parameterization"], params["scale_factor"]) == ("v", 0.3)
    assert (params["linear_start"], params["linear_end"], params["timesteps"]) == (0.00085, 0.012, 1000)
    unet = UNet2DConditionModel.from_single_file(str(file), original_config=str(config_path))
    vae = AutoencoderKL.from_single_file(str(file), original_config=str(config_path))
    for theirs, ours in ((unet, pipe.unet), (vae, pipe.vae)):
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            assert list(theirs.config[key]) == list(ours.config[key]), key
        assert (theirs.config.layers_per_block, theirs.config.in_channels) == \
            (ours.config.layers_per_block, ours.config.in_channels)
        mine = ours.state_dict()
        assert all(torch.equal(value, mine[key]) for key, value in theirs.state_dict().items())
        assert set(theirs.state_dict()) == set(mine)
    assert unet.config.attention_head_dim == 8 and unet.config.cross_attention_dim == 32
    assert vae.config.scaling_factor == 0.3
    loaded = _load(file)  # personae reads the header, the keys and the .yaml, which agree
    assert loaded.scheduler.config.prediction_type == "v_prediction" and loaded.vae.config.scaling_factor == 0.3


def test_a_file_from_another_tool_is_read_as_its_yaml_or_its_keys_say(tmp_path, tiny_model):
    pipe = _v_prediction(build_tiny_pipeline(0))
    save_pipeline_folder(pipe, tmp_path / "folder")
    file = save_single_file(pipe, tmp_path / "v.safetensors")
    bare = _foreign(file, tmp_path / "bare.safetensors")
    assert prediction_type(resolve_model(str(bare))) == "epsilon"  # nothing says otherwise: A1111's default
    comfy = _foreign(file, tmp_path / "comfy.safetensors", keys=("v_pred", "ztsnr"))
    assert prediction_type(resolve_model(str(comfy))) == "v_prediction"
    kohya = _foreign(file, tmp_path / "kohya.safetensors", header={"modelspec.prediction_type": "v"})
    assert prediction_type(resolve_model(str(kohya))) == "v_prediction"
    (tmp_path / "bare.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n    linear_end: 0.012\n")
    a1111 = _load(bare)
    assert a1111.scheduler.config.prediction_type == "v_prediction"
    assert not a1111.scheduler.config.get("rescale_betas_zero_snr")  # A1111 keeps that in a setting, not the file
    reference = _draw(tmp_path / "folder")
    drawn = _draw(comfy)
    assert np.array_equal(np.asarray(drawn.image), np.asarray(reference.image))
    unscaled = _foreign(file, tmp_path / "unscaled.safetensors", drop_scale=True)
    (tmp_path / "unscaled.yaml").write_text("model:\n  params:\n    parameterization: v\n    scale_factor: 0.5\n")
    assert _load(unscaled).vae.config.scaling_factor == 0.5  # A1111 takes the latent scale from the .yaml too


@pytest.mark.parametrize("keys, config, named", [
    (("v_pred",), "model:\n  params:\n    parameterization: eps\n", "its v_pred key says 'v_prediction', c.yaml "
                                                                    "says 'epsilon'"),
    ((), "model: [unclosed", "could not be read as its model config"),
    ((), "model:\n  params:\n    parameterization: x0\n", "parameterization: 'x0'"),
    ((), "just: text\n", "no model: params: section"),
    ((), "model:\n  params:\n    timesteps: many\n", "timesteps: 'many', which is not a positive number"),
])
def test_a_file_whose_sources_disagree_or_whose_yaml_is_unreadable_is_refused(tmp_path, keys, config, named):
    file = save_single_file(_v_prediction(build_tiny_pipeline(0)), tmp_path / "v.safetensors")
    checkpoint = _foreign(file, tmp_path / "c.safetensors", keys=keys)
    (tmp_path / "c.yaml").write_text(config)
    with pytest.raises(UserError) as err:
        _load(checkpoint)
    assert named in str(err.value) and "c.yaml" in str(err.value)
    spec = _foreign(file, tmp_path / "s.safetensors", keys=("v_pred",), header={"modelspec.prediction_type": "epsilon"})
    with pytest.raises(UserError, match="its modelspec.prediction_type says 'epsilon', its v_pred key says"):
        _load(spec)
    header_only = _foreign(file, tmp_path / "h.safetensors", keys=(), drop_scheduler=False)
    (tmp_path / "h.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    with pytest.raises(UserError, match="its header says 'v_prediction', h.yaml says 'epsilon'"):
        _load(header_only)


def test_merge_writes_the_yaml_and_never_over_a_users_own(tmp_path):
    pipe = _v_prediction(_sd_shaped(build_tiny_pipeline(0)))
    save_pipeline_folder(pipe, tmp_path / "v")
    save_pipeline_folder(build_tiny_pipeline(0), tmp_path / "eps")
    out = tmp_path / "merged.safetensors"

    def merge(model, *extra):
        return subprocess.run([sys.executable, "-m", "personae", "merge", str(model), "--method", "none", "--half",
                               "--out", str(out), *extra], capture_output=True, text=True)

    (tmp_path / "merged.yaml").write_text("model:\n  params:\n    parameterization: eps\n")  # the user's own
    r = merge(tmp_path / "v")
    assert r.returncode == 2 and "personae did not write it" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and "eps" in (tmp_path / "merged.yaml").read_text()
    (tmp_path / "merged.yaml").unlink()
    assert merge(tmp_path / "v").returncode == 0
    assert yaml.safe_load((tmp_path / "merged.yaml").read_text())["model"]["params"]["parameterization"] == "v"
    assert _load(out).scheduler.config.prediction_type == "v_prediction"
    # an epsilon model written over it takes personae's own .yaml away: A1111 would read it as v-prediction
    r = merge(tmp_path / "eps", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "merged.yaml").exists()
    assert _load(out).scheduler.config.prediction_type == "epsilon"


def test_kohyas_v_parameterization_is_taken_for_a_v_prediction_base_only(tmp_path, tiny_model):
    from personae.jobs.kohya_job import kohya_settings

    save_pipeline_folder(_v_prediction(build_tiny_pipeline(0)), tmp_path / "v")
    config = {"pretrained_model_name_or_path": str(tmp_path / "v"), "train_data_dir": str(tmp_path),
              "v_parameterization": True}
    job, notes = kohya_settings(config, tmp_path, "config.toml")
    assert any("v_parameterization" in note for note in notes)
    with pytest.raises(UserError) as err:
        kohya_settings({**config, "pretrained_model_name_or_path": str(tiny_model[1])}, tmp_path, "config.toml")
    assert "v_parameterization = True" in str(err.value) and "predicts the noise (epsilon)" in str(err.value)
    with pytest.raises(UserError) as err:  # a base it cannot read is named with why, not guessed at
        kohya_settings({**config, "pretrained_model_name_or_path": str(tmp_path / "gone")}, tmp_path, "config.toml")
    assert "cannot be read (" in str(err.value) and "gone" in str(err.value)
    assert kohya_settings({**config, "v_parameterization": False}, tmp_path, "config.toml")[0]


def test_dreambooth_and_lora_on_a_v_prediction_base_export_files_that_say_so(tmp_path):
    from train_helpers import prepared_subject, write_job

    from personae.jobs.train import load_job, run_training

    save_pipeline_folder(_v_prediction(build_tiny_pipeline(0)), tmp_path / "v")
    data = prepared_subject(tmp_path, count=2)
    for method in ("dreambooth", "lora"):
        run_training(load_job(write_job(tmp_path, base_model=str(tmp_path / "v"), method=method, data=data,
                                        output=tmp_path / method, train={"steps": 2, "batch_size": 2, "seed": 0,
                                                                         "validation": {"steps": 2}})))
    with safe_open(str(tmp_path / "lora" / "lora.safetensors"), "pt") as fh:
        assert fh.metadata()["modelspec.prediction_type"] == "v"  # as kohya says which models a LoRA is for
    run = tmp_path / "dreambooth"
    file = run / "model.safetensors"
    with safe_open(str(file), "pt") as fh:
        assert {"v_pred", "ztsnr"} <= set(fh.keys())
    record = json.loads((run / "run.json").read_text())
    checked = [c for c in record["checks"] if c["family"] == "single_file"]  # the run reloaded it as it loads
    assert checked and checked[0]["files"] == [str(file)] and checked[0]["max_abs_diff"] <= 1e-4, checked
    assert _load(file).scheduler.config.prediction_type == "v_prediction"
    assert np.array_equal(np.asarray(_draw(run / "model").image), np.asarray(_draw(file).image))


@pytest.mark.parametrize("in_channels, target", [(4, "LatentDiffusion"), (9, "LatentInpaintDiffusion")])
def test_a_full_size_sd15_v_model_gets_the_config_a1111_ships_with_v(in_channels, target):
    """SD-1.5's own configs (shipped in the package) give v1-inference.yaml's numbers, with parameterization v, and
    diffusers' reader of original configs builds SD-1.5's UNet and VAE configs back from them."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    from personae.models.ldm_config import ldm_config
    from personae.models.model_files import SD15_DIR

    unet, vae, scheduler = (json.loads((SD15_DIR / name).read_text()) for name in
                            ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"))
    unet["in_channels"] = in_channels
    assert ldm_config(unet, vae, scheduler) is None  # an epsilon model needs no .yaml: A1111's default fits it
    config = ldm_config(unet, vae, {**scheduler, "prediction_type": "v_prediction"})
    params = config["model"]["params"]
    assert config["model"]["target"] == f"ldm.models.diffusion.ddpm.{target}"
    assert (params["parameterization"], params["scale_factor"], params["timesteps"]) == ("v", 0.18215, 1000)
    assert params["conditioning_key"] == ("hybrid" if in_channels == 9 else "crossattn")
    network = params["unet_config"]["params"]
    assert (network["model_channels"], network["channel_mult"], network["attention_resolutions"]) == \
        (320, [1, 2, 4, 4], [4, 2, 1])
    assert (network["num_res_blocks"], network["num_heads"], network["context_dim"]) == (2, 8, 768)
    original = yaml.safe_load(yaml.safe_dump(config))
    theirs_unet = create_unet_diffusers_config_from_ldm(original, {})
    theirs_vae = create_vae_diffusers_config_from_ldm(original, {})
    for theirs, ours in ((theirs_unet, unet), (theirs_vae, vae)):
        for key in ("block_out_channels", "down_block_types", "up_block_types"):
            assert list(theirs[key]) == list(ours[key]), key
        assert theirs["layers_per_block"] == ours["layers_per_block"]
    assert theirs_unet["in_channels"] == in_channels and theirs_unet["attention_head_dim"] == 8
    assert theirs_vae["scaling_factor"] == 0.18215 and theirs_vae["latent_channels"] == 4


def _euler_without_keys(folder):
    """The model's scheduler as many shared folders have it: EulerDiscreteScheduler, its config written before
    diffusers had rescale_betas_zero_snr or timestep_spacing (diffusers then lists those as defaults to take again)."""
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule":
         "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1}))
    return folder


def test_a_schedule_a_sampler_or_training_is_told_wins_over_a_key_the_models_config_left_out(tmp_path):
    """A config whose file left a key out lists it in `_use_default_values`, and diffusers' from_config takes its
    own default for such a key whatever the config then holds: "Zero Terminal SNR" with DDIM drew the default
    schedule (the PNG said otherwise), animate's AnimateDiff timestep spacing fell back to "leading", and a
    training with zero_terminal_snr trained on the plain schedule."""
    from personae.inference.animate import MOTION_SCHEDULE
    from personae.inference.samplers import get_sampler
    from personae.inference.session import open_session
    from personae.training.loop import training_noise_scheduler

    save_pipeline_folder(build_tiny_pipeline(0), tmp_path / "m")
    session = open_session(str(_euler_without_keys(tmp_path / "m")), device="cpu")
    assert "rescale_betas_zero_snr" in session.base_scheduler["_use_default_values"]  # what made it fail
    for name in ("DDIM", "Euler"):
        rescaled = get_sampler(name).make(session.base_scheduler, {"zero_terminal_snr": True})
        assert rescaled.config.rescale_betas_zero_snr, name
    motion = get_sampler("DDIM").make(session.base_scheduler, {}, MOTION_SCHEDULE)
    assert (motion.config.timestep_spacing, motion.config.beta_schedule) == ("linspace", "linear")
    told = get_sampler("DDIM").make(session.base_scheduler, {"prediction_type": "v_prediction"})
    assert told.config.prediction_type == "v_prediction"
    plain, rescaled = (_draw(tmp_path / "m", session=session, sampler="DDIM", noise_schedule=schedule).image
                       for schedule in ("Default", "Zero Terminal SNR"))
    assert not np.array_equal(np.asarray(plain), np.asarray(rescaled))
    scheduler, _ = training_noise_scheduler(session.base_scheduler, zero_terminal_snr=True)
    assert scheduler.config.rescale_betas_zero_snr and float(scheduler.alphas_cumprod[-1]) < 1e-6


def test_prediction_type_draws_a_file_that_does_not_say_it_as_comfyuis_model_sampling_does(tmp_path):
    pipe = _v_prediction(build_tiny_pipeline(0), zero_snr=False)
    save_pipeline_folder(pipe, tmp_path / "folder")
    bare = _foreign(save_single_file(pipe, tmp_path / "v.safetensors"), tmp_path / "bare.safetensors")
    reference = _draw(tmp_path / "folder")
    unsaid = _draw(bare)
    told = _draw(bare, prediction_type="v_prediction")
    assert not np.array_equal(np.asarray(unsaid.image), np.asarray(reference.image))  # read as epsilon: another one
    assert np.array_equal(np.asarray(told.image), np.asarray(reference.image))
    assert told.settings.prediction_type == "v_prediction"  # kept in the PNG's own settings, so it draws again


def test_comfyuis_model_sampling_node_is_read(tmp_path):
    from test_comfy_png import default_graph, read, refusal

    graph = default_graph()
    graph["30"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["4", 0], "sampling": "v_prediction",
                                                                     "zsnr": True}}
    graph["3"]["inputs"]["model"] = ["30", 0]
    data = read(tmp_path, graph)
    assert (data["prediction_type"], data["noise_schedule"]) == ("v_prediction", "Zero Terminal SNR")
    graph["30"]["inputs"].update(sampling="eps", zsnr=False)
    data = read(tmp_path, graph)
    assert data["prediction_type"] == "epsilon" and "noise_schedule" not in data
    graph["30"]["inputs"]["sampling"] = "lcm"
    assert "to 'lcm' sampling" in refusal(tmp_path, graph)
