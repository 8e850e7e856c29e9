"""The demo's storyboard on the shapes world (examples/storyboard-world as calls): three shot tokens taught by
textual inversion from rendered pictures sorted by framing, a star taught as a LoRA, then a six-panel board whose
every panel the exact checker reads back (shot size, the star only where it is cast, the colours described).

The jobs and scenes are those of examples/storyboard-world/*.yaml (tests/test_cli.py holds them equal), with the
demo's paths.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from personae.events import EventHandler, Message

SHOTS_JOB = {  # examples/storyboard-world/shots.yaml
    "method": "textual_inversion",
    "train": {"steps": 200, "batch_size": 4, "learning_rate": 5.0e-3, "resolution": 32, "seed": 0,
              "validation": {"steps": 10, "cfg": 4.0, "prompts": ["a red circle on a blue background, <cu_trg>",
                                                                  "a red circle on a blue background, <fs_trg>"]}},
    "textual_inversion": {"tokens": [{"token": t, "init_word": "picture"} for t in ("<cu_trg>", "<ms_trg>",
                                                                                     "<fs_trg>")]},
}
STAR_JOB = {  # examples/storyboard-world/star.yaml
    "method": "lora",
    "train": {"steps": 300, "batch_size": 4, "learning_rate": 1.0e-3, "lr_scheduler": "constant", "resolution": 32,
              "seed": 0, "min_snr_gamma": 0, "validation": {"steps": 10, "cfg": 4.0,
                                                            "prompts": ["a white star on a blue background, close-up"]}},
    "lora": {"rank": 8, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2",
                                                       "proj_in", "proj_out"]},
}
SCENES = [  # examples/storyboard-world/scenes.yaml
    {"number": 1, "description": "a yellow circle on a blue background", "shot": "full", "dialogue": "Где же звезда?"},
    {"number": 2, "description": "a white star on a blue background", "shot": "close-up", "characters": ["star"],
     "dialogue": "안녕, 나는 별이야!"},
    {"number": 3, "description": "a red square on a green background", "shot": "medium", "dialogue": "Кто там?"},
    {"number": 4, "description": "a white star on a green background", "shot": "medium", "characters": ["star"],
     "dialogue": "집에 가고 싶어."},
    {"number": 5, "description": "a black ring on a yellow background", "shot": "close-up",
     "dialogue": "Добро пожаловать домой!"},
    {"number": 6, "description": "a green triangle on a red background", "shot": "full", "dialogue": "끝"},
]
BOARD = {"sampler": "DDIM", "steps": 25, "cfg": 4.0, "seed": 0, "template": "{description}, {shot_token}",
         "use_shot_tokens": "yes",
         "layout": {"panels_per_row": 3, "panels_per_page": 6, "page_size": "A4", "landscape": True,
                    "title": "The star comes home"}}
SIZE_OF_SHOT = {"close-up": "close-up", "medium": "medium shot", "full": "full shot"}
TOKENS = ("cu_trg", "ms_trg", "fs_trg")


def score_board(board: Path, scenes: list[dict]) -> dict:
    """The checker on every panel of a drawn board: shot size right, the star exactly where cast, colours right."""
    import json

    from personae.world.check import check

    record = json.loads((board / "storyboard.json").read_text(encoding="utf-8"))
    files = {p["number"]: board / p["file"] for p in record["panels"]}
    shot = cast = colours = 0
    for scene in scenes:
        found = check(Image.open(files[scene["number"]]))
        words = scene["description"].split()  # "a COLOUR SHAPE on a BACKGROUND background"
        shot += found.size == SIZE_OF_SHOT[scene["shot"]]
        cast += (found.shape == "star") == ("star" in scene.get("characters", []))
        colours += (found.colour, found.background) == (words[1], words[5])
    return {"panels": len(scenes), "shot": shot, "cast": cast, "colours": colours}


def world_board(out: Path, model: Path, index, on_event: EventHandler) -> dict:
    """Section "Shot tokens and a storyboard on the world"; returns the board's and the 96 generations' scores."""
    from personae.config.prepare import PrepareSettings
    from personae.config.storyboard import StoryboardSettings
    from personae.config.train import TrainJob
    from personae.data.prepare import prepare_dataset
    from personae.inference.session import open_session
    from personae.jobs.storyboard import run_storyboard
    from personae.jobs.train import run_training
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender
    from personae.world.shots import SHOT_TOKENS, score_shots

    here = out / "world-board"
    on_event(Message("world storyboard: rendering pictures by shot and teaching three shot tokens"))
    render_world(WorldRender(count=48, by="shot", shapes="circle,square,triangle,cross",
                             caption="a {colour} {shape} on a {background} background"), here / "shots")
    prepare_dataset(here / "shots", here / "prepared-shots",
                    PrepareSettings(resolution=32, min_side=32, template="{caption}, {token}",
                                    folder_tokens="close_up=<cu_trg>,medium=<ms_trg>,full=<fs_trg>"), on_event)
    run_training(TrainJob.model_validate({**SHOTS_JOB, "base_model": str(model), "output": str(here / "runs/shots"),
                                          "data": {"path": str(here / "prepared-shots")}}),
                 overwrite=True, on_event=on_event)
    on_event(Message("world storyboard: teaching the star as a LoRA"))
    render_world(WorldRender(shapes="star", colours="white", backgrounds="blue,green", shots="close-up,medium",
                             count=8), here / "stars")
    run_training(TrainJob.model_validate({**STAR_JOB, "base_model": str(model), "output": str(here / "runs/star"),
                                          "data": {"path": str(here / "stars")}}), overwrite=True, on_event=on_event)
    embeddings = [{"path": str(here / f"runs/shots/embeddings/{t}.safetensors"), "token": f"<{t}>"} for t in TOKENS]
    board = StoryboardSettings.model_validate({
        **BOARD, "model": str(model), "shot_embeddings": embeddings, "scenes": SCENES,
        "characters": {"star": {"lora": {"path": str(here / "runs/star/lora.safetensors"), "weight": 1.0}}}})
    run_storyboard(board, here / "storyboard", on_event=on_event)
    panels = score_board(here / "storyboard", SCENES)
    session = open_session(str(model), device="cpu", embeddings=[(e["path"], e["token"]) for e in embeddings])
    shots = score_shots(session.pipe, SHOT_TOKENS)
    index.add("Shot tokens and a storyboard on the world",
              "examples/storyboard-world as calls: `personae world render --by shot` drew 48 circles, squares, "
              "triangles and crosses sorted by framing, captions without the framing; `personae prepare "
              "--folder-tokens` mapped the folders to `<cu_trg>`, `<ms_trg>`, `<fs_trg>`; textual inversion taught "
              "them (200 steps from the word \"picture\"), and a LoRA taught the star (300 steps, 8 pictures). "
              f"The tokens set the size in {shots['right']} of {shots['total']} generations (3 shots x 8 shape / "
              f"colour / background combinations x 4 seeds; {shots['held_out_right']} of "
              f"{shots['held_out_total']} on shapes the tokens never saw). The board, read back by the exact "
              f"checker: shot right on {panels['shot']} of {panels['panels']} panels, the star exactly where cast "
              f"on {panels['cast']}, colours right on {panels['colours']}; dialogue in Russian and Korean "
              "(world-board/storyboard/sheet.pdf, text extractable).",
              [here / "storyboard/sheet.png"])
    return {"panels": panels, "shots": shots}
