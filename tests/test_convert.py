"""`personae convert`: LoRA files between kohya/A1111 and diffusers layouts, sd-scripts files included."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from personae.models.resolve import load_pipeline, resolve_model
from personae.training.verify import render

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


def _with_lora(tiny, path):
    pipe = load_pipeline(resolve_model(str(tiny)))
    pipe.load_lora_weights(str(path))
    return render(pipe, "a photo of a cat")


def _sd_scripts_style_file(tiny, path):
    """A LoRA laid out as kohya sd-scripts writes one for SD-1: underscored diffusers module names,
    lora_te_text_model_* for CLIP, alpha != rank (here 1 for rank 4, 8 for conv rank 2), fp16 tensors, ss_* header."""
    pipe = load_pipeline(resolve_model(str(tiny)))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in list(pipe.unet.named_modules()) + [("TE" + n, m) for n, m in pipe.text_encoder.named_modules()]:
        is_te = name.startswith("TE")
        name = name[2:] if is_te else name
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("to_q", "to_v", "q_proj", "out_proj") and isinstance(module, torch.nn.Linear):
            rank, alpha = 4, 1.0
            down = torch.randn(rank, module.in_features, generator=g) * 0.3
            up = torch.randn(module.out_features, rank, generator=g) * 0.3
        elif leaf == "conv1" and isinstance(module, torch.nn.Conv2d) and "resnets" in name:
            rank, alpha = 2, 8.0
            down = torch.randn(rank, module.in_channels, 3, 3, generator=g) * 0.1
            up = torch.randn(module.out_channels, rank, 1, 1, generator=g) * 0.1
        else:
            continue
        key = ("lora_te_text_model_" if is_te else "lora_unet_") + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = down.half()
        tensors[f"{key}.lora_up.weight"] = up.half()
        tensors[f"{key}.alpha"] = torch.tensor(alpha).half()
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4",
                                            "ss_network_alpha": "1.0", "ss_base_model_version": "sd_v1"})
    return path


def personae(*args):
    return subprocess.run([sys.executable, "-m", "personae", *map(str, args)], capture_output=True, text=True)


def test_sd_scripts_file_converts_to_diffusers_and_back_with_identical_output(tmp_path, tiny_model):
    tiny = tiny_model[0]
    kohya = _sd_scripts_style_file(tiny, tmp_path / "sd_scripts_lora.safetensors")
    reference = _with_lora(tiny, kohya)
    assert np.abs(reference - render(load_pipeline(resolve_model(str(tiny))), "a photo of a cat")).max() > 1e-3
    r = personae("convert", kohya, "--to", "diffusers", "--out", tmp_path / "as_diffusers")
    assert r.returncode == 0, r.stderr
    diffusers_file = tmp_path / "as_diffusers" / "pytorch_lora_weights.safetensors"
    with safe_open(str(diffusers_file), "pt") as fh:
        assert any(k.startswith("unet.") and "lora_A" in k for k in fh.keys())
    assert np.abs(_with_lora(tiny, diffusers_file) - reference).max() <= 1e-4
    r = personae("convert", diffusers_file, "--to", "kohya", "--out", tmp_path / "back.safetensors")
    assert r.returncode == 0, r.stderr
    with safe_open(str(tmp_path / "back.safetensors"), "pt") as fh:
        ranks = {fh.get_tensor(k).shape[0] for k in fh.keys() if k.endswith(".lora_down.weight")}
        alphas = {float(fh.get_tensor(k)) for k in fh.keys() if k.endswith(".alpha")}
        back_meta = fh.metadata()
    # the diffusers layout folds alpha / rank into the up weights (older diffusers ignore the header): alpha = rank
    assert alphas == {float(r) for r in ranks} == {2.0, 4.0}
    assert np.abs(_with_lora(tiny, tmp_path / "back.safetensors") - reference).max() <= 1e-4
    # the sd-scripts header travels through both conversions; the hashes are the new file's own
    assert back_meta["ss_network_alpha"] == "1.0" and back_meta["ss_base_model_version"] == "sd_v1"
    from personae.models.addons import file_sha256

    assert back_meta["sshs_model_hash"] == file_sha256(tmp_path / "back.safetensors", skip_safetensors_header=True)
    for path in (diffusers_file, tmp_path / "back.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_convert_refuses_what_it_cannot_read(tmp_path):
    save_file({"something_else.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    r = personae("convert", tmp_path / "x.safetensors", "--to", "diffusers")
    assert r.returncode == 2 and "could not be converted" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    torch.save({"x": torch.zeros(1)}, tmp_path / "x.pt")
    r = personae("convert", tmp_path / "x.pt", "--to", "kohya")
    assert r.returncode == 2 and "arbitrary code" in " ".join(r.stderr.split())
