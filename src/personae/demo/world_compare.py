"""The demo's comparison on the shapes world: the base model, the star DreamBooth taught (section "Teach a star")
and the star LoRA the storyboard cast (section "Shot tokens and a storyboard"), as a `personae compare` suite whose
`metrics: {world: {subject: star}}` reads every image back with the exact checker (examples/compare-world is the
full recipe: DreamBooth against LoRA ranks 1, 4 and 8 on the same images).
"""

from __future__ import annotations

from pathlib import Path

from personae.events import EventHandler

PROMPTS = [  # the star on a training background, then on backgrounds and a size its images lacked, then the prior
    "a white {token} on a blue background",
    "a white {token} on a red background, close-up",
    "a white {token} on a yellow background, medium shot",
    "a white {token} on a green background, full shot",
    "a red circle on a blue background, close-up",
    "a black diamond on a blue background, medium shot",
]
SEEDS = [0, 1, 2, 3]


def world_compare(out: Path, model: Path, index, on_event: EventHandler) -> dict:
    """Section "Compare on the world"; returns `personae compare`'s result (variants, ranking, ...)."""
    from personae.config.compare import CompareSuite
    from personae.evaluation.world_metric import ranking_text
    from personae.jobs.compare import run_compare

    suite = CompareSuite.model_validate({
        "base_model": str(model), "token": "star", "seeds": SEEDS, "prompts": PROMPTS,
        "references": str(out / "world-board/stars"), "metrics": {"world": {"subject": "star"}, "clip": None,
                                                                   "dino": None},
        "variants": [{"label": "base"},
                     {"label": "DreamBooth", "model": str(out / "world-bench/runs/dreambooth-star-s0/model")},
                     {"label": "LoRA r8", "lora": str(out / "world-board/runs/star/lora.safetensors")}]})
    result = run_compare(suite, out / "world-compare", on_event)
    ranking = "; ".join(ranking_text(result["ranking"]))  # as `personae compare` prints it
    index.add("Compare on the world",
              "`personae compare` with `metrics: {world: {subject: star}}`: the base model, the DreamBooth star "
              "(world-bench, 12 images, the whole UNet) and the storyboard's star LoRA (rank 8, 8 images), "
              f"{len(PROMPTS)} prompts x {len(SEEDS)} seeds, every image read back by the exact checker. Subject: "
              "the star drawn on `{token}` prompts; prompt: background, colour and size as asked (on backgrounds "
              "and a size the training images lacked too); prior: ordinary prompts still right. Ranking: "
              f"{ranking}. world-compare/report.html has the table, the scores per prompt and every image; "
              "examples/compare-world runs DreamBooth against LoRA ranks 1, 4 and 8 on the same images.",
              [out / "world-compare/grids/seed-0.png"])
    return result
