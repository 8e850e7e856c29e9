"""Textual inversion: new tokens whose input vectors are learned; nothing else changes.

A token with N vectors is stored as `<t>`, `<t>_1` ... `<t>_{N-1}` in the tokenizer, the
naming diffusers' `load_textual_inversion` uses, so prompts expand `<t>` identically in
training, here, and after reloading the exported files.

Trains: only the input-embedding rows of the new tokens (`textual_inversion.tokens`: token, init word,
    vectors); every other row is put back after each step.
Exports: an A1111 embedding (`<token>.safetensors`, `string_to_param`) and a diffusers
    `learned_embeds.safetensors`; both reloaded and checked.
Reads: `textual_inversion` (tokens), `train`, `data`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from personae.config.train import TokenSpec
from personae.errors import UserError
from personae.methods.base import ExportFile, Method, ParamGroup, export_dtype
from personae.methods.lora import freeze
from personae.models.folders import save_safetensors


def token_names(spec: TokenSpec) -> list[str]:
    return [spec.token] + [f"{spec.token}_{i}" for i in range(1, spec.vectors)]


def file_stem(token: str) -> str:
    """A file name for a token ("<cu_trg>" -> "cu_trg"); in A1111 the file name is the token."""
    return re.sub(r"[^\w\-]+", "", token) or "embedding"


@dataclass
class TokenTable:
    """The new rows of the text encoder's input embedding, and a copy of every other row."""

    specs: list[TokenSpec]
    ids: dict[str, list[int]] = field(default_factory=dict)
    original: torch.Tensor | None = None
    keep: torch.Tensor | None = None  # bool mask of rows that must not change

    def add(self, pipe) -> None:
        tok, te = pipe.tokenizer, pipe.text_encoder
        for spec in self.specs:
            names = token_names(spec)
            if any(n in tok.get_vocab() for n in names):
                raise UserError(f'The token "{spec.token}" already exists in this model\'s vocabulary.',
                                "Choose a new token, e.g. <my_subject>.")
            init_ids = tok(spec.init_word, add_special_tokens=False).input_ids
            if not init_ids:
                raise UserError(f'init_word "{spec.init_word}" of token {spec.token} gives no tokens.')
            tok.add_tokens(names)
            te.resize_token_embeddings(len(tok))
            emb = te.get_input_embeddings().weight
            ids = tok.convert_tokens_to_ids(names)
            with torch.no_grad():
                emb[ids] = emb[init_ids].mean(0, keepdim=True).expand(len(ids), -1).clone()
            self.ids[spec.token] = ids
        emb = te.get_input_embeddings().weight
        self.original = emb.detach().clone()
        self.keep = torch.ones(emb.shape[0], dtype=torch.bool)
        for ids in self.ids.values():
            self.keep[ids] = False

    def parameter(self, pipe) -> torch.nn.Parameter:
        weight = pipe.text_encoder.get_input_embeddings().weight
        weight.requires_grad_(True)
        return weight

    @torch.no_grad()
    def restore_untrained(self, pipe) -> None:
        weight = pipe.text_encoder.get_input_embeddings().weight
        weight[self.keep] = self.original[self.keep].to(weight.device, weight.dtype)

    def vectors(self, pipe, token: str) -> torch.Tensor:
        return pipe.text_encoder.get_input_embeddings().weight[self.ids[token]].detach().to("cpu", torch.float32).clone()

    def state(self, pipe) -> dict[str, torch.Tensor]:
        return {f"embedding.{t}": self.vectors(pipe, t).contiguous() for t in self.ids}

    @torch.no_grad()
    def load_state(self, pipe, state: dict[str, torch.Tensor]) -> None:
        weight = pipe.text_encoder.get_input_embeddings().weight
        for token, ids in self.ids.items():
            weight[ids] = state[f"embedding.{token}"].to(weight.device, weight.dtype)

    def export(self, pipe, out: Path, metadata: dict[str, str], dtype: torch.dtype = torch.float32) -> list[ExportFile]:
        """Per token: `<name>.safetensors` (A1111: emb_params) and `<name>.diffusers.safetensors`, in `dtype`.

        The files keep their token's name whatever the job's `name`: A1111 calls an embedding by its file name."""
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for token in self.ids:
            vectors = self.vectors(pipe, token).to(dtype).contiguous()
            stem = file_stem(token)
            meta = {"name": token, "step": str(metadata.get("steps", "")),
                    "sd_checkpoint_name": str(metadata.get("base_model", ""))}
            for path, tensors, fmt in [(out / f"{stem}.safetensors", {"emb_params": vectors}, "a1111"),
                                       (out / f"{stem}.diffusers.safetensors", {token: vectors}, "diffusers")]:
                save_safetensors(tensors, path, metadata=meta if fmt == "a1111" else {"name": token})
                files.append(ExportFile(path, fmt, "embedding", token))
        return files


@dataclass
class TextualInversionMethod(Method):
    table: TokenTable | None = None

    def _specs(self) -> list[TokenSpec]:
        return self.job.textual_inversion.tokens

    def setup(self, pipe) -> list[ParamGroup]:
        freeze(pipe)
        self.table = TokenTable(self._specs())
        self.table.add(pipe)
        return [ParamGroup("tokens", [self.table.parameter(pipe)], self.job.train.learning_rate, weight_decay=0.0)]

    def modules(self, pipe):
        return [pipe.text_encoder]

    @property
    def text_encoder_changes(self) -> bool:
        return True

    def after_step(self, pipe) -> None:
        self.table.restore_untrained(pipe)

    def trainable_state(self, pipe):
        return self.table.state(pipe)

    def load_trainable_state(self, pipe, state):
        self.table.load_state(pipe, state)

    def export(self, pipe, out: Path, metadata: dict[str, str]) -> list[ExportFile]:
        return self.table.export(pipe, out / "embeddings", metadata, export_dtype(self.job))
