"""Pivotal tuning: new tokens (textual inversion) and a LoRA trained together, each with its own rate.

The recipe behind the storyboard shot tokens `<cu_trg>` `<ms_trg>` `<fs_trg>`: the tokens
carry the concept, the LoRA the look.

Trains: the new tokens' embedding rows (at `pivotal.token_lr`) and LoRA layers (as the lora method), together,
    or with `pivotal.phases: [a, b]` in two phases: the tokens alone for a steps, then the LoRA alone for b
    steps with the tokens fixed (the pivotal-tuning paper's order: find the pivot, then tune around it).
Exports: what the lora and textual_inversion methods export (a kohya LoRA, a diffusers LoRA, the A1111
    and diffusers embeddings), each reloaded and checked.
Reads: `pivotal` (tokens, token rate), `lora`, `dreambooth` (prior preservation), `train`, `data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personae.methods.base import ExportFile, ParamGroup, export_dtype
from personae.methods.lora import LoraMethod
from personae.methods.textual_inversion import TextualInversionMethod, TokenTable

ADAPTER_KEYS = ("lora_", "hada_", "lokr_")  # the adapter's parameters (LoRA, DoRA, LoHa, LoKr), not the token table


def _adapter(key: str) -> bool:
    return any(part in key for part in ADAPTER_KEYS)


@dataclass
class PivotalMethod(TextualInversionMethod):

    def _specs(self):
        return self.job.pivotal.tokens

    def setup(self, pipe) -> list[ParamGroup]:
        lora = LoraMethod(self.job)
        groups = lora.setup(pipe)  # freezes the base, adds the LoRA
        self.said += lora.said
        self.table = TokenTable(self._specs())
        self.table.add(pipe)
        self.adapter_params = [p for g in groups for p in g.params]
        self.token_params = [self.table.parameter(pipe)]
        groups.append(ParamGroup("tokens", self.token_params, self.job.pivotal.token_lr, weight_decay=0.0))
        return groups

    def frozen(self, step: int) -> list:
        """With `pivotal.phases` [a, b]: the tokens alone for a steps (the LoRA waits), then the LoRA alone."""
        phases = self.job.pivotal.phases
        if not phases:
            return []
        return self.adapter_params if step < phases[0] else self.token_params

    def modules(self, pipe):
        return [pipe.unet, pipe.text_encoder]

    def trainable_state(self, pipe):
        state = {k: v for k, v in LoraMethod.trainable_state(self, pipe).items() if _adapter(k)}
        state.update(self.table.state(pipe))
        return state

    def load_trainable_state(self, pipe, state):
        LoraMethod.load_trainable_state(self, pipe, {k: v for k, v in state.items() if _adapter(k)})
        self.table.load_state(pipe, state)

    def trainable_parameters(self, pipe):
        return {k: p for k, p in super().trainable_parameters(pipe).items() if _adapter(k)}

    def export(self, pipe, out: Path, metadata: dict[str, str]) -> list[ExportFile]:
        return (LoraMethod(self.job).export(pipe, out, metadata)
                + self.table.export(pipe, out / "embeddings", metadata, export_dtype(self.job)))
