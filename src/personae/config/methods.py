"""The training methods, in one registry that the job schema, the training loop and the world bench all read.

A new method is one module under personae/methods/ (a `personae.methods.base.Method` subclass: what it
trains, what it exports, which job sections it reads; see that module's docstring) and one entry here.
This is the only place that lists the methods' names (tests/test_methods_registry.py holds it to that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class MethodSpec:
    implementation: str  # "module:Class", the Method subclass (imported only by personae.methods.method_class)
    summary: str  # one line for --help and the UI
    reads: tuple[str, ...]  # the job sections it reads besides data/train/output (documented in its module)
    tokens_section: str | None = None  # the section whose `tokens` it needs: it learns new token embeddings
    bench: dict = field(default_factory=dict)  # its `personae world bench` recipe: job sections over the bench's
    # shared train settings; "{token}", "{init}", "{prior}" are filled in per concept
    train: dict = field(default_factory=dict)  # its own defaults under a job's `train` section (the job file wins)


_LORA = {"rank": 8, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in",
                                                  "proj_out"]}
# Every bench method that changes the UNet trains with prior preservation on the base model's own images of
# ordinary captions ("{prior}", made once per bench): the same LoRA recipe (lr 5e-4, six images) lost 31 points
# of prior accuracy without it and none with it.
_PRIOR = {"prior_preservation": True, "class_data_dir": "{prior}", "num_class_images": 64}
_TOKEN = [{"token": "{token}", "init_word": "{init}"}]
# The LoRA family trains with min-SNR weighting 5 unless the job says otherwise: on the world bench it carried a
# rank-8 LoRA from 76 % to 88-90 % subject fidelity at 1,000 steps (docs/world.md, issue #18). DreamBooth and
# textual inversion keep it off: the bench never measured them with it.
_LORA_TRAIN = {"min_snr_gamma": 5.0}

METHODS: dict[str, MethodSpec] = {
    "lora": MethodSpec(
        "personae.methods.lora:LoraMethod",
        "LoRA layers on the UNet (and the text encoder): a few MB; loads in A1111, ComfyUI and diffusers",
        reads=("lora", "dreambooth"), bench={"lora": _LORA, "dreambooth": _PRIOR}, train=_LORA_TRAIN),
    "dreambooth": MethodSpec(
        "personae.methods.dreambooth:DreamBoothMethod",
        "the whole UNet (and optionally the text encoder): a full model folder and single file",
        # the whole UNet: 1e-4 gave 75 % subject fidelity, 2e-4 85 % (seeds 0-1), the prior still within 5 points
        reads=("dreambooth",), bench={"train": {"learning_rate": 2e-4}, "dreambooth": _PRIOR}),
    "textual_inversion": MethodSpec(
        "personae.methods.textual_inversion:TextualInversionMethod",
        "new token embeddings only: a few KB; loads as an A1111 / diffusers embedding",
        reads=("textual_inversion",), tokens_section="textual_inversion",
        bench={"train": {"learning_rate": 3e-3}, "textual_inversion": {"tokens": _TOKEN}}),
    "pivotal": MethodSpec(
        "personae.methods.pivotal:PivotalMethod",
        "new token embeddings and a LoRA, trained together (pivotal tuning)",
        reads=("pivotal", "lora", "dreambooth"), tokens_section="pivotal",
        bench={"lora": _LORA, "dreambooth": _PRIOR, "pivotal": {"tokens": _TOKEN, "token_lr": 3e-3}},
        train=_LORA_TRAIN),
}

MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]  # pydantic checks job files against it
