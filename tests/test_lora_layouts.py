"""LoRA and embedding files from the wild, at full SD-1.5 size: every layout loads, every key is placed,
the change applied is the one the file's format defines; wrong files are refused in one paragraph.

The pipeline (full-size SD-1.5 UNet and text encoder, random weights, tiny VAE) is built once for the
module and restored after every test. Each file is built with its own layout's naming rule, taken from
an independent source where one exists: kohya's rule (module path with "_"), the LDM names the
single-file exporter writes, the attention-processor names diffusers itself lists, peft's own state dicts.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from personae.errors import UserError
from personae.models.addons import load_embeddings, load_loras

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def sd15():
    """A StableDiffusionPipeline with the SD-1.5 UNet and text encoder at full size (random, seeded), tiny VAE."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from personae.cli.main import quiet_libraries
    from personae.models.tiny import SD15_DIR, TINY_VAE, sd15_scheduler, sd15_tokenizer

    quiet_libraries()
    with torch.device("meta"):  # the UNet has no buffers: allocate, then fill (4x faster than its own init)
        unet = UNet2DConditionModel.from_config(json.loads((SD15_DIR / "unet" / "config.json").read_text()))
    random_weights_(unet.to_empty(device="cpu"), seed=0)
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SD15_DIR / "text_encoder")))
    pipe = StableDiffusionPipeline(unet=unet.eval(), vae=AutoencoderKL(**TINY_VAE), text_encoder=text_encoder.eval(),
                                   tokenizer=sd15_tokenizer(), scheduler=sd15_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.base_output = probe(pipe)
    pipe.vocab_size = len(pipe.tokenizer)
    return pipe


@torch.no_grad()
def random_weights_(model, seed: int):
    """Seeded uniform weights at PyTorch's default scale (1/sqrt(fan_in)), norms at 1 and 0.

    The values are read at random offsets from one pool of 16M uniform numbers, so the 860M
    parameters of a UNet take seconds instead of the ~15 s that drawing each one takes here.
    """
    g = torch.Generator().manual_seed(seed)
    pool = torch.rand(1 << 24, generator=g) * 2 - 1
    for module in model.modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            bound = module.weight[0].numel() ** -0.5
            for param in (module.weight, module.bias):
                if param is None:
                    continue
                flat, done = param.view(-1), 0
                start = int(torch.randint(0, pool.numel(), (1,), generator=g))
                while done < flat.numel():
                    n = min(flat.numel() - done, pool.numel() - start)
                    flat[done:done + n] = pool[start:start + n] * bound
                    done, start = done + n, 0


@pytest.fixture(autouse=True)
def restored(request):
    """After each test: no LoRA layer and no added token left on the shared pipeline."""
    yield
    if "sd15" not in request.fixturenames:
        return
    pipe = request.getfixturevalue("sd15")
    pipe.unload_lora_weights()
    if len(pipe.tokenizer) > pipe.vocab_size:
        pipe.unload_textual_inversion()
    for model in (pipe.unet, pipe.text_encoder):
        assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert len(pipe.tokenizer) == pipe.vocab_size


@torch.no_grad()
def probe(pipe, prompt: str = PROMPT) -> torch.Tensor:
    """One denoising step's prediction at 64 px: text encoder and UNet both take part."""
    embeds = pipe.encode_prompt(prompt, "cpu", 1, False)[0]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return pipe.unet(latents, 500, encoder_hidden_states=embeds).sample


def layers(model) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def placed(pipe, adapter: str) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) and adapter in m.lora_A for part in (pipe.unet, pipe.text_encoder)
               for m in part.modules())


def delta(pipe, component: str, module: str, adapter: str) -> torch.Tensor:
    """The weight change peft applies for `adapter` (its set_adapters weight included)."""
    return getattr(pipe, component).get_submodule(module).get_delta_weight(adapter).detach()


def close(a, b, tol=1e-5):
    return (a.float() - b.float()).abs().max().item() <= tol * max(1.0, b.float().abs().max().item())


def ldm_names(unet) -> dict[str, str]:
    """diffusers UNet module -> its LDM name, as the single-file exporter writes the weights."""
    from personae.models.original_layout import UNET_PREFIX, unet_to_original

    state = unet.state_dict()
    by_tensor = {id(v): k for k, v in unet_to_original(state, dict(unet.config)).items()}
    return {m: by_tensor[id(state[m + ".weight"])][len(UNET_PREFIX):-len(".weight")] for m in layers(unet)}


def kohya_lora(pipe, unet_name, seed=0, te_prefix="lora_te_text_model_", dtype=torch.float16, only=lambda module: True):
    """A kohya/A1111 LoRA + LoCon on every Linear and Conv2d: rank 4 (alpha 2) linears, rank 2 (alpha 4) 3x3 convs.

    Returns the tensors and, per module, a function giving the weight change the file means (computed
    only for the modules a test checks: all of them would take as much memory as the model).
    """
    g = torch.Generator().manual_seed(seed)
    tensors, ref = {}, {}
    parts = [("unet", pipe.unet, lambda m: "lora_unet_" + unet_name(m)),
             ("text_encoder", pipe.text_encoder, lambda m: te_prefix + m.removeprefix("text_model.").replace(".", "_"))]
    for component, model, name_of in parts:
        for module, layer in layers(model).items():
            if not only(module):
                continue
            if isinstance(layer, torch.nn.Linear):
                rank, alpha = 4, 2.0
                down = torch.randn(rank, layer.in_features, generator=g) * 0.1
            else:
                rank, alpha = 2, 4.0
                down = torch.randn(rank, layer.in_channels, *layer.kernel_size, generator=g) * 0.05
            up = torch.randn(layer.weight.shape[0], rank, *([1, 1] if down.ndim == 4 else []), generator=g) * 0.1
            key = name_of(module)
            tensors |= {f"{key}.lora_down.weight": down.to(dtype), f"{key}.lora_up.weight": up.to(dtype),
                        f"{key}.alpha": torch.tensor(alpha).to(dtype)}
            ref[(component, module)] = lambda up=up.to(dtype).float(), down=down.to(dtype).float(), s=alpha / rank: (
                up.flatten(1) @ down.flatten(1) * s).reshape(up.shape[0], *down.shape[1:])
    return tensors, ref


def check_loaded(pipe, path, ref, weight=1.0, sample=("unet", "down_blocks.0.resnets.0.conv1"), **kw):
    """Load `path`; every module of the file got the adapter, output changed, deltas equal the reference."""
    (lora,) = load_loras(pipe, [(str(path), weight)], **kw)
    assert placed(pipe, lora.adapter) == len(ref)
    assert (probe(pipe) - pipe.base_output).abs().max() > 1e-3
    picks = [sample, *list(ref)[:: max(1, len(ref) // 6)]]
    for component, module in picks:
        assert close(delta(pipe, component, module, lora.adapter), weight * ref[(component, module)]())
    return lora


# 1 + 3. kohya / A1111, diffusers spelling, LoCon convolutions included (conv_in, conv_out, samplers, shortcuts)
def test_kohya_with_diffusers_names_and_locon(sd15, tmp_path):
    tensors, ref = kohya_lora(sd15, lambda m: m.replace(".", "_"))
    assert {"lora_unet_conv_in.lora_down.weight", "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight",
            "lora_unet_up_blocks_0_upsamplers_0_conv.alpha", "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
            "lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_up.weight"} <= set(tensors)
    path = tmp_path / "kohya.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"})
    check_loaded(sd15, path, ref, weight=0.7, sample=("unet", "down_blocks.1.resnets.0.conv1"))


def test_kohya_text_encoder_as_diffusers_writes_it_lora_te1(sd15, tmp_path):
    tensors, ref = kohya_lora(sd15, lambda m: m.replace(".", "_"), seed=3, te_prefix="lora_te1_")
    tensors = {k: v for k, v in tensors.items() if k.startswith("lora_te1_")}
    ref = {k: v for k, v in ref.items() if k[0] == "text_encoder"}
    save_file(tensors, str(tmp_path / "te1.safetensors"))
    check_loaded(sd15, tmp_path / "te1.safetensors", ref, sample=("text_encoder", "encoder.layers.11.mlp.fc2"))


# 2 + 3. kohya / A1111, LDM spelling (input_blocks / middle_block / output_blocks), LoCon included
def test_kohya_with_ldm_names_and_locon(sd15, tmp_path):
    names = ldm_names(sd15.unet)
    tensors, ref = kohya_lora(sd15, lambda m: names[m].replace(".", "_"), seed=1)
    real_world = ["input_blocks_1_1_transformer_blocks_0_attn1_to_q", "middle_block_1_proj_in", "output_blocks_3_1_proj_in",
                  "input_blocks_1_0_in_layers_2", "input_blocks_1_0_out_layers_3", "input_blocks_1_0_emb_layers_1",
                  "input_blocks_4_0_skip_connection", "time_embed_0", "input_blocks_0_0", "out_2", "input_blocks_3_0_op",
                  "output_blocks_2_1_conv", "middle_block_0_in_layers_2", "output_blocks_8_2_conv"]
    assert {f"lora_unet_{n}.lora_down.weight" for n in real_world} <= set(tensors)
    save_file(tensors, str(tmp_path / "ldm.safetensors"))
    check_loaded(sd15, tmp_path / "ldm.safetensors", ref, sample=("unet", "conv_out"))


def old_processor_lora(pipe, prefix="unet.", text_encoder=True, seed=2, every=1):
    """The 2023 diffusers scripts' layout: LoRAAttnProcessor weights under unet.attn_processors' names."""
    g = torch.Generator().manual_seed(seed)
    tensors, ref = {}, {}
    for processor in list(pipe.unet.attn_processors)[::every]:  # "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
        attention = pipe.unet.get_submodule(processor.removesuffix(".processor"))
        for short, layer in (("q", attention.to_q), ("k", attention.to_k), ("v", attention.to_v), ("out", attention.to_out[0])):
            down, up = torch.randn(4, layer.in_features, generator=g) * 0.1, torch.randn(layer.out_features, 4, generator=g) * 0.1
            tensors[f"{prefix}{processor}.to_{short}_lora.down.weight"] = down
            tensors[f"{prefix}{processor}.to_{short}_lora.up.weight"] = up
            module = processor.replace("processor", "to_out.0" if short == "out" else f"to_{short}")
            ref[("unet", module)] = lambda up=up, down=down: up @ down
    for i in range(0, pipe.text_encoder.config.num_hidden_layers if text_encoder else 0, every):
        attention = pipe.text_encoder.get_submodule(f"encoder.layers.{i}.self_attn")
        for short in ("q", "k", "v", "out"):
            layer = getattr(attention, f"{short}_proj")
            down, up = torch.randn(4, layer.in_features, generator=g) * 0.1, torch.randn(layer.out_features, 4, generator=g) * 0.1
            tensors[f"text_encoder.text_model.encoder.layers.{i}.self_attn.to_{short}_lora.down.weight"] = down
            tensors[f"text_encoder.text_model.encoder.layers.{i}.self_attn.to_{short}_lora.up.weight"] = up
            ref[("text_encoder", f"encoder.layers.{i}.self_attn.{short}_proj")] = lambda up=up, down=down: up @ down
    return tensors, ref


# 4. the old attention-processor layout, as pytorch_lora_weights.bin (pickle: only with allow_pickle) and without "unet."
def test_old_processor_layout_pickle_with_text_encoder(sd15, tmp_path):
    tensors, ref = old_processor_lora(sd15)
    path = tmp_path / "pytorch_lora_weights.bin"
    torch.save(tensors, path)
    with pytest.raises(UserError, match="arbitrary code|pickle"):
        load_loras(sd15, [(str(path), 1.0)])
    check_loaded(sd15, path, ref, sample=("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"),
                 allow_pickle=True)


def test_old_processor_layout_without_unet_prefix(sd15, tmp_path):
    tensors, ref = old_processor_lora(sd15, prefix="", text_encoder=False, seed=4)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight" in tensors
    save_file(tensors, str(tmp_path / "attn_procs.safetensors"))
    check_loaded(sd15, tmp_path / "attn_procs.safetensors", ref,
                 sample=("unet", "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0"))


def peft_states(pipe, lora_bias=False):
    """peft's own LoRA state dicts for the UNet and text encoder (random), and their configs."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(5)
    unet_config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, rank_pattern={"mid_block.attentions.0.proj_in": 8},
                             lora_bias=lora_bias,
                             target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv_shortcut"])
    te_config = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=["q_proj", "v_proj", "fc1"])
    pipe.unet.add_adapter(unet_config)
    pipe.text_encoder.add_adapter(te_config)
    states = [{k: v.detach().clone() * 0.1 for k, v in get_peft_model_state_dict(model).items()}
              for model in (pipe.unet, pipe.text_encoder)]
    pipe.unload_lora_weights()
    return states, (unet_config, te_config)


def peft_reference(states, scales):
    ref = {}
    for component, state, scale in zip(("unet", "text_encoder"), states, scales):
        for key in state:
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight")
                up, down = state[f"{module}.lora_B.weight"], state[key]
                s = scale(module, down.shape[0])
                ref[(component, module)] = lambda up=up, down=down, s=s: (
                    up.flatten(1) @ down.flatten(1) * s).reshape(up.shape[0], *down.shape[1:])
    return ref


# 5. diffusers / peft layout: with the adapter-metadata header (alpha != rank, a rank pattern) ...
def test_peft_layout_with_adapter_metadata(sd15, tmp_path):
    from diffusers import StableDiffusionPipeline

    (unet_state, te_state), (unet_config, te_config) = peft_states(sd15, lora_bias=True)
    StableDiffusionPipeline.save_lora_weights(
        str(tmp_path), unet_lora_layers=unet_state, text_encoder_lora_layers=te_state, safe_serialization=True,
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=te_config.to_dict())
    ref = peft_reference((unet_state, te_state), (lambda m, r: 8 / r, lambda m, r: 2 / r))
    lora = check_loaded(sd15, tmp_path / "pytorch_lora_weights.safetensors", ref, sample=("unet", "mid_block.attentions.0.proj_in"))
    module = "up_blocks.2.resnets.1.conv1"  # peft's lora_bias: the bias of lora_B arrives too
    bias = sd15.unet.get_submodule(module).lora_B[lora.adapter].bias
    assert torch.equal(bias.detach(), unet_state[f"{module}.lora_B.bias"]) and bias.abs().max() > 0


# ... and without it, in diffusers' renamed spelling (lora.down / lora_linear_layer) with the text_model. prefix
def test_peft_layout_without_metadata_in_diffusers_spelling(sd15, tmp_path):
    from diffusers.utils import convert_state_dict_to_diffusers

    (unet_state, te_state), _ = peft_states(sd15)
    tensors = {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(unet_state).items()}
    tensors |= {f"text_encoder.text_model.{k}": v for k, v in convert_state_dict_to_diffusers(te_state).items()}
    assert any(".lora.down.weight" in k for k in tensors) and any(".lora_linear_layer.up.weight" in k for k in tensors)
    assert any(".lora_A.weight" in k for k in tensors)  # conv1 / proj_in keep peft's names
    save_file(tensors, str(tmp_path / "renamed.safetensors"))
    ref = peft_reference((unet_state, te_state), (lambda m, r: 1.0, lambda m, r: 1.0))  # no alpha: scale 1
    check_loaded(sd15, tmp_path / "renamed.safetensors", ref,
                 sample=("text_encoder", "encoder.layers.3.self_attn.q_proj"))


def attention_and_resnet_modules(pipe):
    """Attention linears + every resnet conv of the UNet, attention and MLP of the text encoder (what LyCORIS trains)."""
    unet = [m for m in layers(pipe.unet) if ".transformer_blocks." in m or (".resnets." in m and ".conv" in m)]
    return [("unet", m) for m in unet] + [("text_encoder", m) for m in layers(pipe.text_encoder)]


# 6. LyCORIS LoHa (kohya names, diffusers spelling), Tucker cores on one convolution
def test_lycoris_loha(sd15, tmp_path):
    g = torch.Generator().manual_seed(6)
    r, alpha, s = 4, 2.0, 0.2
    tensors, ref = {}, {}
    tucker = "down_blocks.1.resnets.1.conv2"
    for component, module in attention_and_resnet_modules(sd15):
        w = getattr(sd15, component).get_submodule(module).weight
        out, rest = w.shape[0], w.shape[1:]
        key = ("lora_unet_" if component == "unet" else "lora_te_text_model_") + module.replace(".", "_")
        p = {"alpha": torch.tensor(alpha)}
        if module == tucker:  # A1111 make_weight_cp: t (r, r, k, k), wa (r, out), wb (r, in)
            for i in (1, 2):
                p |= {f"hada_w{i}_a": torch.randn(r, out, generator=g) * s, f"hada_w{i}_b": torch.randn(r, rest[0], generator=g) * s,
                      f"hada_t{i}": torch.randn(r, r, *rest[1:], generator=g) * s}
            half = lambda p, i, shape: torch.einsum("ijkl,jr,ip->prkl", p[f"hada_t{i}"], p[f"hada_w{i}_b"], p[f"hada_w{i}_a"])
        else:  # wa (out, r), wb (r, in * kh * kw)
            for i in (1, 2):
                p |= {f"hada_w{i}_a": torch.randn(out, r, generator=g) * s,
                      f"hada_w{i}_b": torch.randn(r, rest.numel(), generator=g) * s}
            half = lambda p, i, shape: (p[f"hada_w{i}_a"] @ p[f"hada_w{i}_b"]).reshape(shape)
        ref[(component, module)] = lambda p=p, half=half, shape=w.shape: half(p, 1, shape) * half(p, 2, shape) * alpha / r
        tensors |= {f"{key}.{k}": v for k, v in p.items()}
    save_file(tensors, str(tmp_path / "loha.safetensors"), metadata={"ss_network_module": "lycoris.kohya"})
    lora = check_loaded(sd15, tmp_path / "loha.safetensors", ref, weight=0.8, sample=("unet", tucker))
    assert lora.layout.endswith("LoHa")


# 6. LyCORIS LoKr (kohya names, LDM spelling): full w1 with factored w2, full 4-D w2 on convs, a Tucker w2
def test_lycoris_lokr(sd15, tmp_path):
    g = torch.Generator().manual_seed(7)
    names = ldm_names(sd15.unet)
    r, alpha = 4, 3.0
    tensors, ref = {}, {}
    tucker = "down_blocks.0.resnets.1.conv2"
    modules = [(c, m) for c, m in attention_and_resnet_modules(sd15)
               if c == "text_encoder" or ".transformer_blocks." in m or m.startswith("down_blocks.0.resnets.")]
    for component, module in modules:
        w = getattr(sd15, component).get_submodule(module).weight
        (out, inp), kernel = w.shape[:2], tuple(w.shape[2:])
        key = ("lora_unet_" + names[module] if component == "unet" else "lora_te_text_model_" + module).replace(".", "_")
        p = {"alpha": torch.tensor(alpha)}
        if module == tucker:  # w1 = w1_a @ w1_b, w2 = cp(t2, w2_a, w2_b); scale alpha / w2_b rows
            p |= {"lokr_w1_a": torch.randn(8, 2, generator=g) * 0.5, "lokr_w1_b": torch.randn(2, 8, generator=g) * 0.5,
                  "lokr_w2_a": torch.randn(r, out // 8, generator=g) * 0.3, "lokr_w2_b": torch.randn(r, inp // 8, generator=g) * 0.3,
                  "lokr_t2": torch.randn(r, r, *kernel, generator=g) * 0.3}
            ref[(component, module)] = lambda p=p: torch.kron(
                (p["lokr_w1_a"] @ p["lokr_w1_b"])[:, :, None, None],
                torch.einsum("ijkl,jr,ip->prkl", p["lokr_t2"], p["lokr_w2_b"], p["lokr_w2_a"]).contiguous()) * alpha / r
        elif kernel:  # both factors full: scale 1 whatever alpha says (LyCORIS, A1111, ComfyUI)
            p |= {"lokr_w1": torch.randn(8, 8, generator=g) * 0.3, "lokr_w2": torch.randn(out // 8, inp // 8, *kernel, generator=g) * 0.03}
            ref[(component, module)] = lambda p=p: torch.kron(p["lokr_w1"][:, :, None, None], p["lokr_w2"])
        else:
            p |= {"lokr_w1": torch.randn(8, 8, generator=g) * 0.3, "lokr_w2_a": torch.randn(out // 8, r, generator=g) * 0.15,
                  "lokr_w2_b": torch.randn(r, inp // 8, generator=g) * 0.15}
            ref[(component, module)] = lambda p=p: torch.kron(p["lokr_w1"], p["lokr_w2_a"] @ p["lokr_w2_b"]) * alpha / r
        tensors |= {f"{key}.{k}": v for k, v in p.items()}
    assert "lora_unet_input_blocks_1_0_in_layers_2.lokr_w2" in tensors
    save_file(tensors, str(tmp_path / "lokr.safetensors"))
    lora = check_loaded(sd15, tmp_path / "lokr.safetensors", ref, sample=("unet", tucker))
    assert lora.layout.startswith("kohya/A1111 names (LDM spelling") and lora.layout.endswith("LoKr")


# 6. full diff (weights and biases) on part of the model
def test_full_diff_with_biases(sd15, tmp_path):
    g = torch.Generator().manual_seed(8)
    tensors, ref = {}, {}
    modules = [("unet", m) for m in layers(sd15.unet) if m.startswith("down_blocks.0.attentions.0.")]
    modules += [("unet", "down_blocks.0.resnets.0.conv1"), ("text_encoder", "encoder.layers.0.self_attn.q_proj")]
    for component, module in modules:
        layer = getattr(sd15, component).get_submodule(module)
        key = ("lora_unet_" if component == "unet" else "lora_te_text_model_") + module.replace(".", "_")
        tensors[f"{key}.diff"] = torch.randn(layer.weight.shape, generator=g) * 0.01
        if layer.bias is not None:
            tensors[f"{key}.diff_b"] = torch.randn(layer.bias.shape, generator=g) * 0.1
        ref[(component, module)] = lambda d=tensors[f"{key}.diff"]: d
    bias_only = sd15.text_encoder.get_submodule("encoder.layers.1.mlp.fc1")
    tensors["lora_te_text_model_encoder_layers_1_mlp_fc1.diff_b"] = torch.randn(bias_only.bias.shape, generator=g)
    ref[("text_encoder", "encoder.layers.1.mlp.fc1")] = lambda: torch.zeros_like(bias_only.weight)
    save_file(tensors, str(tmp_path / "full.safetensors"))
    check_loaded(sd15, tmp_path / "full.safetensors", ref, sample=("unet", "down_blocks.0.attentions.0.proj_in"))
    bias_only = sd15.text_encoder.get_submodule("encoder.layers.1.mlp.fc1")  # now the LoRA layer around it
    layer = sd15.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")  # the bias reaches the output
    x = torch.randn(3, layer.in_features, generator=g)
    expected = torch.nn.functional.linear(x, tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.diff"],
                                          tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.diff_b"])
    with torch.no_grad():
        assert close(layer(x) - layer.base_layer(x), expected)
        y = bias_only(torch.zeros(1, bias_only.in_features))
        assert close(y - bias_only.base_layer.bias, tensors["lora_te_text_model_encoder_layers_1_mlp_fc1.diff_b"])


# 7. ComfyUI's "Extract and Save Lora" (comfy_extras/nodes_lora_extract.py): the model's own keys with dots,
# diffusion_model.<LDM name> and text_encoders.clip_l.transformer.text_model.<path>, fp16, no alpha (scale 1), and with
# bias_diff (on by default) a diff_b per bias, which ComfyUI applies as it is, at the LoRA's weight
def test_comfyui_extracted_lora_with_bias_changes(sd15, tmp_path):
    names = ldm_names(sd15.unet)
    g = torch.Generator().manual_seed(9)
    tensors, ref, biases = {}, {}, {}
    for component, model in (("unet", sd15.unet), ("text_encoder", sd15.text_encoder)):
        for module, layer in layers(model).items():
            if not module.startswith(("down_blocks.0.", "encoder.layers.0.", "text_model.encoder.layers.0.")):
                continue
            key = ("diffusion_model." + names[module] if component == "unet" else
                   "text_encoders.clip_l.transformer.text_model." + module.removeprefix("text_model."))
            w = layer.weight
            down = (torch.randn(2, *w.shape[1:], generator=g) * 0.05).half()
            up = (torch.randn(w.shape[0], 2, *([1, 1] if w.ndim == 4 else []), generator=g) * 0.05).half()
            tensors |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down}
            ref[(component, module)] = lambda up=up.float(), down=down.float(): (
                up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
            if layer.bias is not None:
                biases[(component, module)] = tensors[f"{key}.diff_b"] = (torch.randn(w.shape[0], generator=g) * 0.1).half()
    assert "diffusion_model.input_blocks.1.0.in_layers.2.diff_b" in tensors
    save_file(tensors, str(tmp_path / "comfy.safetensors"))
    lora = check_loaded(sd15, tmp_path / "comfy.safetensors", ref, weight=0.5, sample=("unet", "down_blocks.0.resnets.0.conv1"))
    assert lora.layout.startswith("ComfyUI's model-key names")
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    layer = sd15.unet.get_submodule(module)
    x = torch.randn(3, layer.in_features, generator=g)
    with torch.no_grad():  # the layer's output moves by half of the weight change and half of the bias change
        assert close(layer(x) - layer.base_layer(x), 0.5 * (x @ ref[("unet", module)]().T + biases[("unet", module)].float()))


# 9. the Open Model Initiative layout (omi_model_standards' convert_sd_lora_key_sets; OneTrainer saves it):
# unet.<LDM name> and clip_l.text_model.<path>, kohya's parameter names and alpha
def test_omi_layout(sd15, tmp_path):
    names = ldm_names(sd15.unet)
    tensors, ref = kohya_lora(sd15, lambda m: m, seed=14, only=lambda m: m.startswith(("up_blocks.1.", "encoder.layers.1.",
                                                                                          "text_model.encoder.layers.1.")))
    omi = {}
    for (component, module) in ref:
        key = "unet." + names[module] if component == "unet" else "clip_l.text_model." + module.removeprefix("text_model.")
        kohya = "lora_unet_" + module if component == "unet" else "lora_te_text_model_" + module.removeprefix(
            "text_model.").replace(".", "_")
        for param in ("lora_down.weight", "lora_up.weight", "alpha"):
            omi[f"{key}.{param}"] = tensors[f"{kohya}.{param}"]
    assert "unet.output_blocks.3.1.transformer_blocks.0.attn2.to_k.alpha" in omi
    save_file(omi, str(tmp_path / "omi.safetensors"))
    lora = check_loaded(sd15, tmp_path / "omi.safetensors", ref, weight=0.9, sample=("unet", "up_blocks.1.resnets.0.conv1"))
    assert lora.layout.startswith("the Open Model Initiative layout")


def test_changes_to_normalisation_layers_and_embeddings_apply_beside_the_lora(sd15, tmp_path):
    """ComfyUI's Extract and Save Lora with its defaults (bias_diff on, a text encoder given) writes a `diff` for each
    1-D weight, a `diff_b` for each bias and LoRA pairs for the text encoder's embeddings; ComfyUI adds each, times
    the strength, to the layer (nodes_lora_extract.py, weight_adapter). peft has no layer for them: personae applies
    them beside the file's LoRA layers, at the file's weight, and they leave with it."""
    import torch.nn.functional as F

    tensors = small_kohya(sd15)
    g = torch.Generator().manual_seed(21)
    te = dict(sd15.text_encoder.named_modules())
    te_path = {p.removeprefix("text_model."): p for p in te}  # transformers 4 has the text_model level, 5 not
    norms = {"diffusion_model.input_blocks.1.0.in_layers.0": ("unet", "down_blocks.0.resnets.0.norm1"),
             "diffusion_model.input_blocks.1.1.transformer_blocks.0.norm2":
                 ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.norm2"),
             "text_encoders.clip_l.transformer.text_model.encoder.layers.0.layer_norm1":
                 ("text_encoder", te_path["encoder.layers.0.layer_norm1"])}
    changes = {}
    for key, (component, module) in norms.items():
        width = getattr(sd15, component).get_submodule(module).weight.shape[0]
        dw, db = torch.randn(width, generator=g) * 0.2, torch.randn(width, generator=g) * 0.2
        tensors |= {f"{key}.diff": dw.half(), f"{key}.diff_b": db.half()}
        changes[(component, module)] = (dw.half().float(), db.half().float())
    token = "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding"
    up, down = torch.randn(49408, 4, generator=g) * 0.1, torch.randn(4, 768, generator=g) * 0.1
    tensors |= {f"{token}.lora_up.weight": up.half(), f"{token}.lora_down.weight": down.half()}
    save_file(tensors, str(tmp_path / "comfy.safetensors"))
    (lora,) = load_loras(sd15, [(str(tmp_path / "comfy.safetensors"), 0.5)])
    assert "norm full diff" in lora.layout and "embedding LoRA" in lora.layout
    x = torch.randn(2, 320, 8, 8, generator=g)
    with torch.no_grad():
        for (component, module), (dw, db) in changes.items():
            layer = getattr(sd15, component).get_submodule(module)
            inp = x if isinstance(layer, torch.nn.GroupNorm) else torch.randn(2, 5, layer.weight.shape[0], generator=g)
            expected = (F.group_norm(inp, layer.num_groups, layer.weight + 0.5 * dw, layer.bias + 0.5 * db, layer.eps)
                        if isinstance(layer, torch.nn.GroupNorm) else
                        F.layer_norm(inp, layer.normalized_shape, layer.weight + 0.5 * dw, layer.bias + 0.5 * db,
                                     layer.eps))
            assert close(layer(inp), expected) and not close(layer(inp), layer.__class__.forward(layer, inp))
        table = sd15.text_encoder.get_input_embeddings()
        ids = torch.tensor([[0, 7, 49407]])
        want = table.weight[ids] + 0.5 * (up.half().float() @ down.half().float())[ids]
        assert close(table(ids), want)
        # the weight is the adapter's: off with it, and gone once it is unloaded
        sd15.set_adapters([lora.adapter], adapter_weights=[0.0])
        assert close(table(ids), table.weight[ids], tol=0)
        sd15.set_adapters([lora.adapter], adapter_weights=[1.0])
        assert close(table(ids), table.weight[ids] + (up.half().float() @ down.half().float())[ids])
        # textual-inversion tokens added afterwards grow the table in place (transformers >= 4.46 keeps the module):
        # the change stays on the rows it was made for, the new token's row is its own
        load_embeddings(sd15, [(str(_embedding_file(tmp_path)), "<new>")])
        grown = sd15.text_encoder.get_input_embeddings()
        assert grown is table and grown.weight.shape[0] == 49409
        assert close(grown(ids), grown.weight[ids] + (up.half().float() @ down.half().float())[ids])
        assert close(grown(torch.tensor([[49408]])), grown.weight[49408:49409].unsqueeze(0), tol=0)
        sd15.unload_lora_weights()
        assert close(grown(ids), grown.weight[ids], tol=0) and not hasattr(grown, "_personae_patches")
        layer = sd15.unet.get_submodule("down_blocks.0.resnets.0.norm1")
        assert close(layer(x), torch.nn.GroupNorm.forward(layer, x), tol=0) and "forward" not in vars(layer)


def test_normalisation_changes_under_accelerate_offload_hooks(sd15, tmp_path):
    """--lowvram / --medvram put accelerate hooks on the layers after the LoRAs load: the change runs inside the
    hook, and unloading the LoRA gives the layer its own forward back without taking the hook off."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    key, module = "diffusion_model.input_blocks.1.0.in_layers.0", "down_blocks.0.resnets.0.norm1"
    dw = torch.randn(320, generator=torch.Generator().manual_seed(4))
    save_file(small_kohya(sd15) | {f"{key}.diff": dw}, str(tmp_path / "norm.safetensors"))
    load_loras(sd15, [(str(tmp_path / "norm.safetensors"), 1.0)])
    layer = sd15.unet.get_submodule(module)
    calls = []

    class Counting(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            calls.append(1)
            return args, kwargs

    add_hook_to_module(layer, Counting())
    x = torch.randn(1, 320, 4, 4)
    try:
        with torch.no_grad():
            plain = torch.nn.GroupNorm.forward(layer, x)
            assert not close(layer(x), plain) and calls == [1]
            sd15.unload_lora_weights()
            assert close(layer(x), plain, tol=0) and calls == [1, 1] and hasattr(layer, "_hf_hook")
            assert not hasattr(layer, "_personae_patches")
    finally:
        remove_hook_from_module(layer)


def test_a_file_of_changes_beside_the_layers_alone_loads_and_is_not_converted(sd15, tmp_path):
    """Only normalisation changes (or only OFT / GLoRA / IA3): no LoRA layer of its own, so a zero rank-1 one on
    conv_in carries the file's weight; it adds nothing. `convert` leaves such a file as it is."""
    from personae.cli.main import main

    key, module = "diffusion_model.input_blocks.1.0.in_layers.0", "down_blocks.0.resnets.0.norm1"
    norm = {f"{key}.diff": torch.randn(320, generator=torch.Generator().manual_seed(6))}
    save_file(norm, str(tmp_path / "alone.safetensors"))
    (lora,) = load_loras(sd15, [(str(tmp_path / "alone.safetensors"), 0.5)])
    layer, x = sd15.unet.get_submodule(module), torch.randn(1, 320, 4, 4)
    with torch.no_grad():
        want = torch.nn.functional.group_norm(x, 32, layer.weight + 0.5 * norm[f"{key}.diff"], layer.bias, layer.eps)
        assert close(layer(x), want)
        assert float(delta(sd15, "unet", "conv_in", lora.adapter).abs().max()) == 0.0
        sd15.set_adapters([lora.adapter], adapter_weights=[0.0])
        assert close(layer(x), torch.nn.GroupNorm.forward(layer, x), tol=0)
    save_file(small_kohya(sd15) | norm, str(tmp_path / "both.safetensors"))
    out = tmp_path / "converted"
    assert main(["convert", str(tmp_path / "both.safetensors"), "--to", "diffusers", "--out", str(out)]) == 2
    assert not out.exists()


def _embedding_file(tmp_path):
    path = tmp_path / "new.safetensors"
    save_file({"emb_params": torch.randn(1, 768, generator=torch.Generator().manual_seed(3))}, str(path))
    return path


def test_several_files_each_with_its_weight(sd15, tmp_path):
    a, ref_a = old_processor_lora(sd15, prefix="unet.", text_encoder=False, seed=9, every=4)
    names = ldm_names(sd15.unet)
    b, ref_b = kohya_lora(sd15, lambda m: names[m].replace(".", "_"), seed=10, only=lambda m: m.startswith("down_blocks.2."))
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    la, lb = load_loras(sd15, [(str(tmp_path / "a.safetensors"), 0.5), (str(tmp_path / "b.safetensors"), -1.5)])
    (_, module), *_ = sorted(set(ref_a) & set(ref_b))
    assert close(delta(sd15, "unet", module, la.adapter), 0.5 * ref_a[("unet", module)]())
    assert close(delta(sd15, "unet", module, lb.adapter), -1.5 * ref_b[("unet", module)]())


# refusals: one paragraph, before anything is loaded
def small_kohya(sd15):
    tensors, _ = kohya_lora(sd15, lambda m: m.replace(".", "_"), seed=11)
    keep = ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.", "lora_te_text_model_encoder_layers_0_")
    return {k: v for k, v in tensors.items() if k.startswith(keep)}


def test_a_file_with_one_unknown_key_is_refused_naming_it_and_the_layout(sd15, tmp_path):
    tensors = small_kohya(sd15)
    tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qkv.lora_down.weight"] = torch.zeros(4, 320)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(UserError) as err:
        load_loras(sd15, [(str(tmp_path / "odd.safetensors"), 1.0)])
    message = str(err.value)
    assert "attn1_to_qkv.lora_down.weight" in message and "kohya/A1111 names (diffusers spelling" in message
    assert "1 of its" in message and "\n" not in message
    assert not any(isinstance(m, BaseTunerLayer) for m in sd15.unet.modules())


def test_a_bare_weight_is_read_only_as_ia3_beside_its_on_input(sd15, tmp_path):
    """IA3's parameter is called `weight`: a model's own weight (a checkpoint's key) must not pass for one."""
    tensors = small_kohya(sd15)
    tensors["lora_unet_down_blocks_0_attentions_0_proj_in.weight"] = torch.zeros(320, 320, 1, 1)
    save_file(tensors, str(tmp_path / "weight.safetensors"))
    with pytest.raises(UserError, match=r"1 of its 22 keys fit no module .* Unplaced: lora_unet_down_blocks_0_"
                                        r"attentions_0_proj_in.weight: not a LoRA parameter name"):
        load_loras(sd15, [(str(tmp_path / "weight.safetensors"), 1.0)])
    tensors["lora_unet_down_blocks_0_attentions_0_proj_in.on_input"] = torch.tensor(0.0)
    tensors["lora_unet_down_blocks_0_attentions_0_proj_in.weight"] = torch.full((1, 320, 1, 1), 0.5)
    save_file(tensors, str(tmp_path / "ia3.safetensors"))
    (lora,) = load_loras(sd15, [(str(tmp_path / "ia3.safetensors"), 1.0)])
    assert lora.layout == "kohya/A1111 names (diffusers spelling: lora_unet_down_blocks_...), LoRA + IA3"
    proj_in = sd15.unet.down_blocks[0].attentions[0].proj_in
    x = torch.randn(1, 320, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # W * 0.5 on every output channel: the output less its bias, half again
        plain = torch.nn.Conv2d.forward(proj_in, x)
        assert close(proj_in(x), plain + 0.5 * (plain - proj_in.bias[None, :, None, None]))
    # kept beside the layer: the file's 320 values, not a 320x320 copy of the change
    assert not any(isinstance(m, BaseTunerLayer) for m in proj_in.modules())


def test_lycoris_1_oft_is_refused_by_name(sd15, tmp_path):
    tensors = small_kohya(sd15)
    tensors["lora_unet_down_blocks_0_attentions_0_proj_in.oft_diag"] = torch.zeros(4, 80, 80)
    save_file(tensors, str(tmp_path / "oft1.safetensors"))
    with pytest.raises(UserError, match=r"holds LyCORIS OFT modules in LyCORIS 1's layout \(oft_diag"):
        load_loras(sd15, [(str(tmp_path / "oft1.safetensors"), 1.0)])


def test_a_key_whose_sizes_do_not_fit_is_refused(sd15, tmp_path):
    tensors = small_kohya(sd15)
    tensors["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch.zeros(4, 64)
    save_file(tensors, str(tmp_path / "small.safetensors"))
    with pytest.raises(UserError, match=r"made for another base model .*: 1 of 7 layers have other shapes, first: "
                                        r"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q "
                                        r"expected \(320, 320\) got \(320, 64\)"):
        load_loras(sd15, [(str(tmp_path / "small.safetensors"), 1.0)])


def test_a_load_that_fails_halfway_leaves_no_adapter_behind(sd15, tmp_path, monkeypatch):
    save_file(small_kohya(sd15), str(tmp_path / "half.safetensors"))

    def broken(*args, **kwargs):
        raise RuntimeError("text encoder loader failed")

    monkeypatch.setattr(type(sd15), "load_lora_into_text_encoder", broken)
    with pytest.raises(RuntimeError, match="text encoder loader failed"):
        load_loras(sd15, [(str(tmp_path / "half.safetensors"), 1.0)])
    assert placed(sd15, "lora0_half") == 0 and not any(sd15.get_list_adapters().values())


@pytest.mark.parametrize("family, tensors", [
    ("SDXL", {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
              "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 1280),
              "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k.lora_down.weight": torch.zeros(4, 2048)}),
    ("SDXL", {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 2048),
              "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(640, 4)}),
    ("SD-2", {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 1024),
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 1024)}),
])
def test_sdxl_and_sd2_files_are_named_in_one_line(sd15, tmp_path, family, tensors):
    save_file(tensors, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError) as err:
        load_loras(sd15, [(str(tmp_path / "other.safetensors"), 1.0)])
    message = str(err.value)
    assert f"a LoRA for {family}, not for Stable Diffusion 1.x" in message
    assert "\n" not in message and len(message) < 400


# 7. textual inversions: A1111 .pt / .safetensors, diffusers .safetensors / .bin
def embedding_files(tmp_path):
    g = torch.Generator().manual_seed(12)
    vectors = {name: torch.randn(n, 768, generator=g) * 0.4 for name, n in
               (("a1111-pt", 2), ("a1111-st", 3), ("<diffusers-st>", 1), ("<diffusers-bin>", 1), ("onetrainer", 2))}
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors["a1111-pt"]}, "name": "whatever",
                "step": 1500, "sd_checkpoint": "abc123", "sd_checkpoint_name": "v1-5"}, tmp_path / "a1111-pt.pt")
    save_file({"emb_params": vectors["a1111-st"]}, str(tmp_path / "a1111-st.safetensors"))
    save_file({"<diffusers-st>": vectors["<diffusers-st>"]}, str(tmp_path / "learned_embeds.safetensors"))
    torch.save({"<diffusers-bin>": vectors["<diffusers-bin>"]}, tmp_path / "learned_embeds.bin")
    save_file({"emp_params": vectors["onetrainer"]}, str(tmp_path / "onetrainer.safetensors"))  # OneTrainer's key
    files = {"a1111-pt": "a1111-pt.pt", "a1111-st": "a1111-st.safetensors",
             "<diffusers-st>": "learned_embeds.safetensors", "<diffusers-bin>": "learned_embeds.bin",
             "onetrainer": "onetrainer.safetensors"}
    return vectors, {token: tmp_path / name for token, name in files.items()}


def test_embeddings_in_every_format_load_and_their_tokens_work(sd15, tmp_path):
    vectors, files = embedding_files(tmp_path)
    for pickled in (files["a1111-pt"], files["<diffusers-bin>"]):
        with pytest.raises(UserError, match="arbitrary code|pickle"):
            load_embeddings(sd15, [(str(pickled), None)])
    loaded = load_embeddings(sd15, [(str(p), None) for p in files.values()], allow_pickle=True)
    assert [e.token for e in loaded] == list(files)
    with pytest.raises(UserError, match="already taken"):
        load_embeddings(sd15, [(str(files["a1111-st"]), None)])
    table = sd15.text_encoder.get_input_embeddings().weight
    for token, v in vectors.items():
        ids = sd15.tokenizer.convert_tokens_to_ids([token] + [f"{token}_{i}" for i in range(1, len(v))])
        assert torch.equal(table[ids].detach(), v)
    base = sd15.encode_prompt(PROMPT, "cpu", 1, False)[0]
    for token in vectors:
        assert (sd15.encode_prompt(f"{PROMPT}, {token}", "cpu", 1, False)[0] - base).abs().max() > 1e-3


# 8. embeddings bundled in a LoRA file (A1111's bundle_emb.<token>.<vectors>; OneTrainer writes
# bundle_emb.<token>.string_to_param.* for a LoRA trained with its embeddings, pivotal tuning)
def test_embeddings_bundled_in_a_lora_join_the_tokenizer_with_the_lora(sd15, tmp_path):
    from personae.methods.lora_files import read_lora_file

    g = torch.Generator().manual_seed(13)
    tensors = small_kohya(sd15)
    vectors = {"<ohwx>": torch.randn(2, 768, generator=g) * 0.4, "stylx9": torch.randn(1, 768, generator=g) * 0.4}
    tensors["bundle_emb.<ohwx>.string_to_param.*"] = vectors["<ohwx>"]
    tensors["bundle_emb.stylx9.emb_params"] = vectors["stylx9"]
    save_file(tensors, str(tmp_path / "pivotal.safetensors"))
    (lora,) = load_loras(sd15, [(str(tmp_path / "pivotal.safetensors"), 0.7)])
    assert lora.tokens == ("<ohwx>", "stylx9") and placed(sd15, lora.adapter) == 7
    table = sd15.text_encoder.get_input_embeddings().weight
    for token, v in vectors.items():
        ids = sd15.tokenizer.convert_tokens_to_ids([token] + [f"{token}_{i}" for i in range(1, len(v))])
        assert torch.equal(table[ids].detach(), v)
    with pytest.raises(ValueError, match="bundles the embeddings <ohwx>, stylx9"):  # convert would lose them
        read_lora_file(tmp_path / "pivotal.safetensors")


def test_a_bundled_embedding_whose_token_is_taken_leaves_the_pipeline_as_it_was(sd15, tmp_path):
    tensors = small_kohya(sd15)
    tensors["bundle_emb.photo.string_to_param.*"] = torch.zeros(1, 768)  # "photo" is in the CLIP vocabulary
    save_file(tensors, str(tmp_path / "taken.safetensors"))
    with pytest.raises(UserError, match="'photo' of .*taken.safetensors is already taken"):
        load_loras(sd15, [(str(tmp_path / "taken.safetensors"), 1.0)])
    assert not any(isinstance(m, BaseTunerLayer) for m in sd15.unet.modules())
    tensors = small_kohya(sd15) | {"bundle_emb.wide.clip_g": torch.zeros(1, 1280)}
    save_file(tensors, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(UserError, match=r"bundle_emb.wide.clip_g\) is an SDXL embedding"):
        load_loras(sd15, [(str(tmp_path / "sdxl.safetensors"), 1.0)])


def test_a_onetrainer_output_embedding_is_refused_by_name(sd15, tmp_path):
    save_file({"emp_params_out": torch.zeros(1, 768)}, str(tmp_path / "out.safetensors"))
    with pytest.raises(UserError, match="OneTrainer output embedding") as err:
        load_embeddings(sd15, [(str(tmp_path / "out.safetensors"), None)])
    assert "\n" not in str(err.value)


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("touch /tmp/personae-evil-ran",)


def test_a_pickle_that_would_run_code_is_refused_even_when_pickles_are_allowed(sd15, tmp_path):
    import os

    path = tmp_path / "learned_embeds.bin"
    path.write_bytes(pickle.dumps({"<x>": _Evil()}))
    with pytest.raises(UserError, match="weights_only"):
        load_embeddings(sd15, [(str(path), None)], allow_pickle=True)
    assert not os.path.exists("/tmp/personae-evil-ran")


def test_embeddings_for_other_families_are_named(sd15, tmp_path):
    save_file({"emb_params": torch.zeros(2, 1024)}, str(tmp_path / "sd2.safetensors"))
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, str(tmp_path / "xl.safetensors"))
    with pytest.raises(UserError, match="SD-2 embedding"):
        load_embeddings(sd15, [(str(tmp_path / "sd2.safetensors"), None)])
    with pytest.raises(UserError, match="SDXL embedding"):
        load_embeddings(sd15, [(str(tmp_path / "xl.safetensors"), None)])


# personae convert reads the same layouts: LDM names and the old processor layout -> diffusers, same output
@pytest.mark.parametrize("layout", ["ldm", "processor"])
def test_convert_ldm_and_processor_files_to_diffusers_gives_the_same_output(sd15, tmp_path, layout):
    from personae.cli.main import main

    if layout == "ldm":  # every kind of module: first level, middle, a decoder level, the ends, a text-encoder layer
        names = ldm_names(sd15.unet)
        part = ("down_blocks.0.", "mid_block.", "up_blocks.1.", "conv_in", "conv_out", "time_embedding.", "encoder.layers.0.")
        tensors, _ = kohya_lora(sd15, lambda m: names[m].replace(".", "_"), seed=13, only=lambda m: m.startswith(part))
        src, extra = tmp_path / "ldm.safetensors", []
        save_file(tensors, str(src))
    else:
        tensors, _ = old_processor_lora(sd15, seed=14, every=3)
        src, extra = tmp_path / "pytorch_lora_weights.bin", ["--allow-pickle"]
        torch.save(tensors, src)
    load_loras(sd15, [(str(src), 1.0)], allow_pickle=True)
    original = probe(sd15)
    sd15.unload_lora_weights()
    assert main(["convert", str(src), "--to", "diffusers", "--out", str(tmp_path / "out"), *extra]) == 0
    sd15.load_lora_weights(str(tmp_path / "out" / "pytorch_lora_weights.safetensors"), adapter_name="converted")
    converted = probe(sd15)
    assert (original - sd15.base_output).abs().max() > 1e-3
    assert (converted - original).abs().max() <= 1e-4
