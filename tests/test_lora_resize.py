"""`personae convert --rank`: a LoRA cut to a lower rank as kohya's resize_lora cuts it. A change of low true rank
comes back exactly at that rank (same pictures through personae's loader and diffusers'), alpha / rank is kept, the
dynamic methods pick kohya's ranks, and bad options are one paragraph."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from train_helpers import model_outputs

from personae.methods.lora_resize import new_rank
from personae.models.addons import load_loras
from personae.models.resolve import load_pipeline, resolve_model

pytestmark = pytest.mark.slow

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "down_blocks.0.resnets.0.conv1"
TE_Q = "encoder.layers.0.self_attn.out_proj"  # diffusers 0.42 reads a kohya text encoder only with out_proj in it


def _pipe(tiny_model):
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rank8_file(pipe, path):
    """A kohya file of rank 8 whose changes have true rank 2: the last six directions add nothing."""
    g = torch.Generator().manual_seed(1)
    tensors = {}
    q, conv = pipe.unet.get_submodule(Q), pipe.unet.get_submodule(CONV)
    te = next(m for n, m in pipe.text_encoder.named_modules() if n.endswith(TE_Q))
    for name, out, inner in (("lora_unet_" + Q.replace(".", "_"), q.out_features, (q.in_features,)),
                             ("lora_unet_" + CONV.replace(".", "_"), conv.out_channels, (conv.in_channels, 3, 3)),
                             ("lora_te_text_model_" + TE_Q.replace(".", "_"), te.out_features, (te.in_features,))):
        down = torch.randn(8, *inner, generator=g)
        mix = torch.zeros(8, 8)
        mix[:, :2] = torch.randn(8, 2, generator=g)  # up uses two directions only: up @ down has rank 2
        up = torch.randn(out, 8, generator=g) @ mix
        tensors[f"{name}.lora_down.weight"] = down * 0.2
        tensors[f"{name}.lora_up.weight"] = (up * 0.2).reshape(out, 8, *([1, 1] if len(inner) == 3 else []))
        tensors[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path), {"ss_network_module": "networks.lora", "ss_network_dim": "8",
                                   "ss_network_alpha": "4"})
    return path



def test_a_rank_8_file_of_true_rank_2_resizes_exactly(tiny_model, tmp_path, capsys):
    from personae.cli.main import main

    source = _rank8_file(_pipe(tiny_model), tmp_path / "big.safetensors")
    want_pipe = _pipe(tiny_model)
    load_loras(want_pipe, [(str(source), 1.0)])
    want = model_outputs(want_pipe)
    capsys.readouterr()
    assert main(["convert", str(source), "--to", "kohya", "--rank", "2"]) == 0  # kohya to kohya: a resize
    said = capsys.readouterr().out
    assert "resized 3 layers from rank 8 to 2" in said and "keeps 100.0% of its Frobenius norm" in said, said
    small = tmp_path / "big_rank2.safetensors"
    with safe_open(str(small), "pt") as fh:
        downs = {k: fh.get_tensor(k) for k in fh.keys() if k.endswith("lora_down.weight")}
        alphas = {k: float(fh.get_tensor(k)) for k in fh.keys() if k.endswith(".alpha")}
        meta = fh.metadata()
    assert {d.shape[0] for d in downs.values()} == {2} and set(alphas.values()) == {1.0}  # alpha / rank: 4 / 8
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1"
    for loader in ("personae", "diffusers"):
        pipe = _pipe(tiny_model)
        if loader == "personae":
            load_loras(pipe, [(str(small), 1.0)])
        else:
            pipe.load_lora_weights(str(small))
        for got, expected in zip(model_outputs(pipe), want):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # to diffusers at rank 4, the convolution at rank 1
    assert main(["convert", str(source), "--to", "diffusers", "--rank", "4", "--conv-rank", "1"]) == 0
    with safe_open(str(tmp_path / "big_rank4_diffusers/pytorch_lora_weights.safetensors"), "pt") as fh:
        ranks = {k: fh.get_tensor(k).shape[0] for k in fh.keys() if k.endswith("lora_A.weight")}
    assert sorted(ranks.values()) == [1, 4, 4]  # the convolution at its own rank
    # never above a layer's own rank (kohya would pad with zero directions)
    assert main(["convert", str(source), "--to", "kohya", "--rank", "16"]) == 0
    with safe_open(str(tmp_path / "big_rank16.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).shape[0] for k in fh.keys() if k.endswith("lora_down.weight")} == {8}
    # in fp16 (kohya --save_precision), half the bytes, and it loads
    assert main(["convert", str(source), "--to", "kohya", "--rank", "2", "--save-precision", "fp16", "--out",
                 str(tmp_path / "half.safetensors")]) == 0
    with safe_open(str(tmp_path / "half.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    load_loras(_pipe(tiny_model), [(str(tmp_path / "half.safetensors"), 1.0)])


def test_dynamic_methods_pick_kohyas_ranks():
    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    assert new_rank(s, 6, "sv_ratio", 4) == 2  # above 10 / 4: 10 and 5
    assert new_rank(s, 6, "sv_ratio", 25) == 5  # above 0.4
    squares = s.pow(2).cumsum(0) / s.pow(2).sum()  # 0.79, 0.99, ...
    assert float(squares[0]) < 0.9 ** 2 < float(squares[1]) and new_rank(s, 6, "sv_fro", 0.9) == 2
    sums = s.cumsum(0) / s.sum()  # 0.54, 0.81, 0.91, ...
    assert new_rank(s, 6, "sv_cumulative", 0.9) == 3 and float(sums[1]) < 0.9 < float(sums[2])
    assert new_rank(s, 2, "sv_cumulative", 0.99) == 2  # rank is the largest kept
    assert new_rank(torch.zeros(4), 3) == 1  # a zero change: rank 1, as kohya


def test_bad_resize_options_are_one_paragraph(tiny_model, tmp_path, capsys):
    from personae.cli.main import main

    source = _rank8_file(_pipe(tiny_model), tmp_path / "big.safetensors")
    for argv, said in ((["--to", "kohya"], "already in the kohya layout"),
                       (["--to", "kohya", "--dynamic-method", "sv_fro", "--dynamic-param", "0.9"], "needs --rank"),
                       (["--to", "kohya", "--rank", "4", "--dynamic-method", "sv_fro"], "go together"),
                       (["--to", "kohya", "--rank", "0"], "whole number from 1")):
        capsys.readouterr()
        assert main(["convert", str(source), *argv]) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert said in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]  # nothing written


def _rank2_file(pipe, path, modules: dict, seed: int):
    """A kohya file of rank-2 changes on `modules` ({kohya name: (out, inner shape)})."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, (out, inner) in modules.items():
        tensors[f"{name}.lora_down.weight"] = torch.randn(2, *inner, generator=g) * 0.2
        tensors[f"{name}.lora_up.weight"] = (torch.randn(out, 2, generator=g) * 0.2).reshape(
            out, 2, *([1, 1] if len(inner) == 3 else []))
        tensors[f"{name}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(path), {"ss_network_module": "networks.lora"})
    return path


def test_several_loras_merge_into_one_as_kohyas_svd_merge(tiny_model, tmp_path, capsys):
    """kohya's svd_merge_lora: the files' changes at their weights summed per layer, cut to the rank by SVD. Two
    rank-2 files at 0.5 and 1 share a layer (a rank-4 sum there), so rank 4 without clamping is exact."""
    from personae.cli.main import main

    pipe = _pipe(tiny_model)
    q, conv = pipe.unet.get_submodule(Q), pipe.unet.get_submodule(CONV)
    te = next(m for n, m in pipe.text_encoder.named_modules() if n.endswith(TE_Q))
    q_name, conv_name = "lora_unet_" + Q.replace(".", "_"), "lora_unet_" + CONV.replace(".", "_")
    te_name = "lora_te_text_model_" + TE_Q.replace(".", "_")
    first = _rank2_file(pipe, tmp_path / "a.safetensors", {q_name: (q.out_features, (q.in_features,)),
                                                           conv_name: (conv.out_channels, (conv.in_channels, 3, 3))}, 1)
    second = _rank2_file(pipe, tmp_path / "b.safetensors", {q_name: (q.out_features, (q.in_features,)),
                                                            te_name: (te.out_features, (te.in_features,))}, 2)
    both = _pipe(tiny_model)
    load_loras(both, [(str(first), 0.5), (str(second), 1.0)])
    want = model_outputs(both)
    capsys.readouterr()
    assert main(["convert", f"{first}:0.5", str(second), "--to", "kohya", "--rank", "4", "--clamp-quantile", "1",
                 "--out", str(tmp_path / "ab.safetensors")]) == 0
    said = capsys.readouterr().out
    assert "merged a.safetensors x 0.5, b.safetensors x 1 over 3 layers at rank 4" in said and "keeps 100.0%" in said
    merged = _pipe(tiny_model)
    load_loras(merged, [(str(tmp_path / "ab.safetensors"), 1.0)])
    for got, expected in zip(model_outputs(merged), want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    with safe_open(str(tmp_path / "ab.safetensors"), "pt") as fh:
        assert fh.get_tensor(f"{q_name}.lora_down.weight").shape[0] == 4
        assert float(fh.get_tensor(f"{q_name}.alpha")) == 4  # alpha = rank: the sum carries its own scale
    # kohya's default clamp, and the diffusers layout, run too; bad merges are one paragraph
    assert main(["convert", str(first), str(second), "--to", "diffusers", "--rank", "2"]) == 0
    assert (tmp_path / "a_merged_rank2_diffusers/pytorch_lora_weights.safetensors").is_file()
    for argv, words in (([str(first), str(second), "--to", "kohya"], "needs a fixed --rank"),
                        ([f"{first}:half", "--to", "kohya", "--rank", "2"], "is not a number"),
                        ([str(first), "--to", "kohya", "--rank", "1", "--out", str(first), "--overwrite"],
                         "never writes its inputs")):
        capsys.readouterr()
        assert main(["convert", *argv]) == 2
        assert words in " ".join(capsys.readouterr().err.split())
