"""How well a world motion adapter moves the world's shapes: clips made through `personae animate`'s own code, every
frame read back by the exact checker.

    scores = measure_motion(str(WORLD_DIR), "./world-motion", out=Path("motion-eval"))
    scores["rows"]   # 16-frame clips at motion scale 1 and 0, 32-frame clips in context windows

Clip i of a row is `personae animate --model MODEL --motion-adapter DIR --prompt CAPTION --seed i --sampler DDIM
--steps 25 --cfg 4 --clip-skip 1` (the world model's own evaluation settings: it was pretrained on the last layer
of its text encoder, not animate's default clip skip 2), the caption a held-out clip's (world/clips.py), plus
`--lora` / `--embedding` for the LoRA and motion words `personae world motion` wrote beside the adapter. Each row
counts: **identity** (shape, colour and background as asked in every frame), **direction** (the track moves as
asked: monotonic within `clips.SLACK`, at least `clips.MIN_TRAVEL` px; growing at least `MIN_GROWTH`; still
within `STILL_DRIFT`), **both**, **consistent** (the same reading in every frame, asked or not) and the mean
**jitter** of the tracks (px of second difference: 0 for steady motion, large for independent frames).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from personae.config.animate import AnimateSettings
from personae.inference.animate import animate, open_for
from personae.outputs import Kind
from personae.world.clips import SCORE_KEYS, Clip, eval_clips, score_clip, shares
from personae.world.control_eval import sheet
from personae.world.motion_settings import LORA_FILE, WORDS_DIR

MOTION_EVAL = Kind("world-motion-eval", "a world motion adapter measurement", "personae world motion-eval",
                   layout=("table.md", "results.json", "sheets/*", "clips/*"))
CONTEXT, STRIDE = 16, 4  # the windows of a 32-frame clip: animate's defaults


def clip_settings(model: str, adapter: str, clip: Clip, seed: int, steps: int, cfg: float, motion_scale: float = 1.0,
                  frames: int = 16, lora: str | None = None, embeddings=()) -> AnimateSettings:
    """What `personae animate` is given for one measured clip (`--lora FILE`: the adapter's LoRA, if it has one;
    `--embedding FILE:TOKEN`: its motion words, if it learnt them)."""
    return AnimateSettings(model=model, motion_adapter=adapter, prompt=clip.caption(), seed=seed, steps=steps,
                           cfg=cfg, sampler="DDIM", clip_skip=1, frames=frames, motion_scale=motion_scale,
                           context=CONTEXT, context_stride=STRIDE, device="cpu",
                           loras=[{"path": lora, "weight": 1.0}] if lora else [],
                           embeddings=[{"path": path, "token": token} for path, token in embeddings])


def adapter_lora(adapter: str) -> str | None:
    """The LoRA `personae world motion` wrote beside the adapter (OUT/motion-lora.safetensors), if there is one."""
    path = Path(adapter) / LORA_FILE
    return str(path) if path.is_file() else None


def adapter_words(adapter: str) -> list[tuple[str, str]]:
    """The motion words' embeddings `personae world motion` wrote beside the adapter: (file, token) pairs."""
    return [(str(p), p.stem) for p in sorted((Path(adapter) / WORDS_DIR).glob("*.safetensors"))]


def adapter_base(adapter: str) -> str:
    """The model an adapter was trained on, as its training record names it (`world` or a folder);
    `world` for an adapter without a record. A recorded folder that is gone is the user's to name (`--model`)."""
    import yaml

    from personae.errors import UserError
    from personae.world.model import world_model_dir

    record = Path(adapter) / "training" / "settings.yaml"
    try:  # another tool's file of that name is no record of ours
        data = yaml.safe_load(record.read_text()) if record.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        data = None
    base = data.get("base", "world") if isinstance(data, dict) else "world"
    folder = world_model_dir(str(base))
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{record} says the adapter learnt on the model {folder}, which is not a model folder here.",
                        "Pass the model it learnt on with --model.")
    return str(folder)


def generate_clips(model: str, adapter: str, clips: list[Clip], steps: int = 25, cfg: float = 4.0,
                   motion_scale: float = 1.0, session=None, lora: str | None = None,
                   embeddings=()) -> list[list[Image.Image]]:
    """The frames of each clip (clip i at seed i), as `personae animate` draws them; one animate session for all."""
    out = []
    for i, clip in enumerate(clips):
        settings = clip_settings(model, adapter, clip, i, steps, cfg, motion_scale, len(clip.boxes), lora, embeddings)
        session = session or open_for(settings)
        out.append(animate(settings, session).frames)
    return out


def measure_rows(model: str, adapter: str, clips: int = 32, long_clips: int = 12, steps: int = 25, cfg: float = 4.0,
                 on_event=None, lora: str | None = None,
                 embeddings=()) -> tuple[list[dict], dict[str, list[list[Image.Image]]]]:
    """The three rows (16 frames at scale 1, the same at scale 0, `long_clips` of 32 frames at scale 1) and the
    frames of each, by row name; `lora`, `embeddings`: a LoRA file and (file, token) embeddings loaded with the
    adapter (as `personae animate --lora FILE --embedding FILE:TOKEN`)."""
    from personae.events import Message, ignore

    on_event = on_event or ignore
    short = eval_clips(clips)
    runs = [("16 frames, motion scale 1", short, 1.0), ("16 frames, motion scale 0 (independent frames)", short, 0.0)]
    if long_clips:
        runs.append(("32 frames in windows of 16 (stride 4), motion scale 1", eval_clips(long_clips, frames=32), 1.0))
    rows, frames = [], {}
    session = None
    for name, chosen, scale in runs:
        settings = clip_settings(model, adapter, chosen[0], 0, steps, cfg, scale, len(chosen[0].boxes), lora,
                                 embeddings)
        session = session or open_for(settings)
        made = generate_clips(model, adapter, chosen, steps, cfg, scale, session, lora, embeddings)
        scored = [score_clip(f, c) for f, c in zip(made, chosen)]
        rows.append({"run": name, "clips": len(chosen), "frames": len(chosen[0].boxes), "motion_scale": scale,
                     **shares(scored), "per_clip": scored})
        frames[name] = made
        on_event(Message(f"{name}: identity {rows[-1]['identity']:.0%}, direction {rows[-1]['direction']:.0%} "
                         f"of {len(chosen)} clips"))
    return rows, frames


def clip_sheet(clips: list[list[Image.Image]], count: int = 12) -> Image.Image:
    """One row of frames per clip (the first `count` clips)."""
    return sheet([list(frames) for frames in clips[:count]])


def measure_motion(model: str, adapter: str, out: Path, clips: int = 32, long_clips: int = 12, steps: int = 25,
                   cfg: float = 4.0, on_event=None, lora: str | None = None, embeddings=()) -> dict:
    """The table of docs/world.md: writes OUT/table.md, OUT/results.json, OUT/sheets/ (a row of frames per clip)
    and OUT/clips/ (one GIF per clip of the first row, as `personae animate` writes them)."""
    from personae.media.video import write_gif

    out = Path(out)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rows, frames = measure_rows(model, adapter, clips, long_clips, steps, cfg, on_event, lora, embeddings)
    for i, (name, made) in enumerate(frames.items()):
        clip_sheet(made).save(out / "sheets" / f"row-{i + 1}.png")
    captions = [c.caption() for c in eval_clips(clips)]
    for i, made in enumerate(frames[rows[0]["run"]]):
        write_gif(made, out / "clips" / f"clip-{i:02d}.gif", fps=8.0, comment=captions[i])
    result = {"adapter": adapter, "lora": lora, "embeddings": [path for path, _ in embeddings], "model": model,
              "steps": steps, "cfg": cfg, "sampler": "DDIM", "clip_skip": 1, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(table_markdown(result))
    return result


def table_markdown(result: dict) -> str:
    head = ("| run | clips | identity (all frames) | direction right | both | consistent | identity (frames) | "
            "jitter (px) | direction by motion |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['run']} | {r['clips']} | " + " | ".join(f"{r[k]:.0%}" for k in SCORE_KEYS) +
             f" | {r['identity_frames']:.1%} | {r['jitter']:.2f} | " +
             ", ".join(f"{m} {v}" for m, v in r["by_motion"].items()) + " |"
             for r in result["rows"]]
    return (f"Held-out clips ({result['sampler']}, {result['steps']} steps, CFG {result['cfg']:g}, clip skip "
            f"{result['clip_skip']}).\n\n" + head + "\n".join(lines) + "\n")
