"""Storyboards: panels, a one-page sheet PNG and PDF with Korean text, --only, shot tokens (issue #7)."""

import hashlib
import subprocess
import sys

import pytest
import torch
import yaml
from PIL import Image, ImageFont
from safetensors.torch import save_file

from personae.errors import UserError
from personae.jobs.storyboard import load_scenes, run_storyboard

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

SCENES = [
    {"number": 1, "description": "a girl waits at a bus stop", "dialogue": "버스가 왜 안 오지?", "shot": "close-up",
     "angle": "eye level"},
    {"number": 2, "description": "the bus arrives in the rain", "dialogue": "", "shot": "full", "angle": "high angle"},
    {"number": 3, "description": "she checks her phone", "dialogue": "Привет! Ты где?", "shot": "medium",
     "angle": "low angle"},
    {"number": 4, "description": "the driver waves", "dialogue": "Come on in!", "shot": "MS", "angle": "eye level"},
    {"number": 5, "description": "rain on the window", "dialogue": "비가 너무 많이 와요.", "shot": "CU", "angle": ""},
    {"number": 6, "description": "the bus drives into the night", "dialogue": "안녕히 가세요", "shot": "wide",
     "angle": "high angle"},
]


def _write(tmp_path, model, scenes=SCENES, **extra):
    data = {"version": 1, "model": str(model), "steps": 3, "width": 64, "height": 64, "seed": 0, "scenes": scenes, **extra}
    path = tmp_path / "scenes.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_six_korean_scenes_make_six_panels_a_one_page_sheet_and_a_pdf(tmp_path, tiny_model):
    from pypdf import PdfReader

    summary = run_storyboard(load_scenes(_write(tmp_path, tiny_model[0])), tmp_path / "board")
    board = tmp_path / "board"
    assert sorted(p.name for p in (board / "panels").glob("*.png")) == [f"panel-{i:03d}.png" for i in range(1, 7)]
    assert summary["sheets"] == ["sheet.png"] and (board / "sheet.png").is_file()
    reader = PdfReader(str(board / "sheet.pdf"))
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 6
    text = reader.pages[0].extract_text()
    for scene in SCENES:
        assert f"#{scene['number']}" in text and scene["dialogue"] in text and scene["description"] in text
    sheet_text = Image.open(board / "sheet.png").text["Description"]  # the PNG's words, as the PDF's
    for scene in SCENES:
        assert f"#{scene['number']}" in sheet_text and scene["dialogue"] in sheet_text
    # the font really draws Hangul and Cyrillic (not the empty-box glyph)
    font = ImageFont.truetype(summary["font"], 24)
    notdef = font.getmask("\ue000").getbbox()
    for ch in "버스가왜안오지Привет":
        assert font.getmask(ch).getbbox() not in (None, notdef)
    panel_params = (board / "panels" / "panel-001.png")
    from personae.media.png import read_png_text

    assert "close-up shot" in read_png_text(panel_params)["parameters"]


def test_only_redraws_that_panel_and_relays_the_sheet(tmp_path, tiny_model):
    path = _write(tmp_path, tiny_model[0])
    run_storyboard(load_scenes(path), tmp_path / "board")
    before = {p.name: _sha(p) for p in (tmp_path / "board/panels").glob("*.png")}
    sheet = _sha(tmp_path / "board/sheet.png")
    edited = [dict(s, description="the bus arrives in the snow") if s["number"] == 2 else s for s in SCENES]
    run_storyboard(load_scenes(_write(tmp_path, tiny_model[0], edited)), tmp_path / "board", only={2})
    after = {p.name: _sha(p) for p in (tmp_path / "board/panels").glob("*.png")}
    assert [n for n in before if before[n] != after[n]] == ["panel-002.png"]
    assert _sha(tmp_path / "board/sheet.png") != sheet
    import json

    record = json.loads((tmp_path / "board/storyboard.json").read_text())
    assert [p["number"] for p in record["panels"]] == [1, 2, 3, 4, 5, 6]
    assert "snow" in record["panels"][1]["prompt"] and record["panels"][1]["sha256"] == after["panel-002.png"]


def test_shot_tokens_reach_the_text_encoder(tmp_path, tiny_model):
    from personae.config.storyboard import Scene
    from personae.inference.prompt import PromptEncoder
    from personae.inference.session import open_session
    from personae.inference.storyboard import panel_prompt

    torch.manual_seed(0)
    files = {}
    for name in ("a", "b"):
        save_file({"emb_params": torch.randn(2, 32)}, str(tmp_path / f"cu_{name}.safetensors"))
        files[name] = tmp_path / f"cu_{name}.safetensors"
    settings = load_scenes(_write(tmp_path, tiny_model[0], shot_embeddings=[{"path": str(files["a"]), "token": "<cu_trg>"}]))
    close, medium = Scene(**SCENES[0]), Scene(**SCENES[2])
    outputs, ids = {}, {}
    for name, file in files.items():
        session = open_session(str(tiny_model[0]), "cpu", embeddings=[(str(file), "<cu_trg>")])
        prompt = panel_prompt(close, settings, {"<cu_trg>"})
        assert prompt.startswith("<cu_trg> close-up shot")
        encoder = PromptEncoder(session.pipe)
        token_ids = [t for chunk in encoder.token_chunks(prompt) for t, _ in chunk]
        ids[name] = session.pipe.tokenizer.convert_tokens_to_ids(["<cu_trg>", "<cu_trg>_1"])
        assert all(i in token_ids for i in ids[name])
        outputs[name] = (encoder.encode(prompt).embeds, encoder.encode(panel_prompt(medium, settings, {"<cu_trg>"})).embeds)
    assert not torch.equal(outputs["a"][0], outputs["b"][0])  # the close-up panel uses the <cu_trg> vectors
    assert torch.equal(outputs["a"][1], outputs["b"][1])  # the medium panel does not
    without = load_scenes(_write(tmp_path, tiny_model[0]))
    assert panel_prompt(close, without, set()).startswith("close-up shot")  # no token loaded: the phrase alone


def test_the_issue_example_file_and_csv_work_through_the_cli(tmp_path, tiny_model):
    (tmp_path / "tiny").symlink_to(tiny_model[0])
    (tmp_path / "scenes.yaml").write_text(
        "version: 1\nmodel: ./tiny\nsteps: 4\nwidth: 64\nheight: 64\nseed: 0\nscenes:\n"
        '  - {number: 1, description: "a girl waits at a bus stop", dialogue: "버스가 왜 안 오지?", shot: close-up, angle: eye level}\n'
        '  - {number: 2, description: "the bus arrives in the rain", dialogue: "", shot: full, angle: high angle}\n',
        encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "personae", "storyboard", tmp_path / "scenes.yaml", "--out",
                        tmp_path / "board", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "board/sheet.pdf").is_file() and len(list((tmp_path / "board/panels").glob("*.png"))) == 2
    (tmp_path / "scenes.csv").write_text("number,description,dialogue,shot,angle\n1,a cat on a roof,야옹,CU,low angle\n"
                                         "2,the city at night,,wide,\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "personae", "storyboard", tmp_path / "scenes.csv", "--model",
                        tiny_model[0], "--out", tmp_path / "csv", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "csv/panels").glob("*.png"))) == 2


def test_bad_storyboards_fail_before_drawing(tmp_path, tiny_model):
    bad_shot = [dict(SCENES[0], shot="bird's eye")]
    with pytest.raises(UserError, match="Unknown shot"):
        run_storyboard(load_scenes(_write(tmp_path, tiny_model[0], bad_shot)), tmp_path / "b1")
    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    if __import__("os").path.exists(dejavu):
        with pytest.raises(UserError, match="no glyphs"):
            run_storyboard(load_scenes(_write(tmp_path, tiny_model[0], font=dejavu)), tmp_path / "b2")
    with pytest.raises(UserError, match="no image yet"):
        run_storyboard(load_scenes(_write(tmp_path, tiny_model[0])), tmp_path / "b3", only={2})
    assert not list((tmp_path).glob("b*/panels/*.png"))


def test_characters_keep_their_seed_and_their_lora_is_on_only_in_their_panels(tmp_path, tiny_model):
    import numpy as np
    from test_generate import _lora_file

    from personae.config.storyboard import Scene
    from personae.inference.storyboard import panel_seed

    lora = _lora_file(tmp_path / "mina.safetensors")
    scenes = [{"number": 1, "description": "mina at the stop", "shot": "CU", "characters": ["mina"]},
              {"number": 2, "description": "an empty street", "shot": "wide"},
              {"number": 3, "description": "mina boards", "shot": "MS", "characters": ["mina"]}]
    characters = {"mina": {"prompt": "a girl with a red umbrella", "lora": {"path": str(lora)}, "seed": 42}}
    settings = load_scenes(_write(tmp_path, tiny_model[0], scenes, characters=characters, seed_policy="per_character"))
    assert [panel_seed(Scene(**s), settings) for s in scenes] == [42, 2, 42]
    run_storyboard(settings, tmp_path / "with")
    no_lora = {"mina": {"prompt": "a girl with a red umbrella", "seed": 42}}
    plain = load_scenes(_write(tmp_path, tiny_model[0], scenes[:2], characters=no_lora, seed_policy="per_character"))
    run_storyboard(plain, tmp_path / "without")
    from PIL import Image

    def px(board, n):
        return np.asarray(Image.open(tmp_path / board / "panels" / f"panel-{n:03d}.png"), dtype=int)

    assert np.abs(px("with", 1) - px("without", 1)).mean() > 1  # mina's LoRA is on in her panel...
    assert np.abs(px("with", 2) - px("without", 2)).max() <= 1  # ...and off where she is absent
    record = __import__("json").loads((tmp_path / "with/storyboard.json").read_text())
    assert "a girl with a red umbrella" in record["panels"][0]["prompt"]


def test_letter_portrait_layout_spills_onto_a_second_page(tmp_path, tiny_model):
    from pypdf import PdfReader

    seven = SCENES + [{"number": 7, "description": "the end", "dialogue": "끝", "shot": "full", "angle": ""}]
    layout = {"panels_per_row": 2, "panels_per_page": 6, "page_size": "Letter", "landscape": False, "title": "Bus"}
    summary = run_storyboard(load_scenes(_write(tmp_path, tiny_model[0], seven, layout=layout)), tmp_path / "board")
    assert summary["sheets"] == ["sheet-1.png", "sheet-2.png"]
    from PIL import Image

    width, height = Image.open(tmp_path / "board/sheet-1.png").size
    assert height > width  # portrait
    reader = PdfReader(str(tmp_path / "board/sheet.pdf"))
    assert len(reader.pages) == 2 and len(reader.pages[1].images) == 1
    assert round(float(reader.pages[0].mediabox.width)) == 612  # Letter: 8.5 in
    assert "끝" in reader.pages[1].extract_text()


def test_a_missing_path_in_the_scenes_file_is_named_by_its_key(tmp_path, tiny_model):
    """Issue #17 item 6: a style LoRA path from the YAML was reported as "The lora file ..." (read: --lora)."""
    missing = {"path": "./runs/board/lora.safetensors", "weight": 0.9}
    with pytest.raises(UserError, match=r"scenes.yaml: style_lora.path is ./runs/board/lora.safetensors, which does "
                                         r"not exist \(looked for .*runs/board/lora.safetensors, relative to the "
                                         r"scenes file\)") as err:
        load_scenes(_write(tmp_path, tiny_model[0], style_lora=missing))
    assert "--lora" not in str(err.value)
    embedding = [{"path": "emb/cu.safetensors", "token": "<cu_trg>"}]
    with pytest.raises(UserError, match=r"shot_embeddings\[0\].path is emb/cu.safetensors"):
        load_scenes(_write(tmp_path, tiny_model[0], shot_embeddings=embedding))
    (tmp_path / "emb").mkdir()
    save_file({"emb_params": torch.zeros(1, 32)}, str(tmp_path / "emb/cu.safetensors"))
    settings = load_scenes(_write(tmp_path, tiny_model[0], shot_embeddings=embedding))
    assert settings.shot_embeddings[0].path == str((tmp_path / "emb/cu.safetensors").resolve())


SHOT_LIST = [("ECU", "extreme close-up shot"), ("XCU", "extreme close-up shot"), ("extreme close-up", "extreme close-up shot"),
             ("OTS", "over-the-shoulder shot"), ("over the shoulder", "over-the-shoulder shot"), ("two shot", "two shot"),
             ("2-shot", "two shot"), ("establishing shot", "establishing shot"), ("EWS", "extreme wide shot"),
             ("ELS", "extreme wide shot"), ("XLS", "extreme wide shot"), ("extreme long shot", "extreme wide shot"),
             ("wide shot", "full shot"), ("long shot", "full shot"), ("CU", "close-up shot"), ("MS", "medium shot")]


def test_shot_names_of_storyboard_artists_are_their_own_kinds_in_yaml_and_csv(tmp_path, tiny_model):
    from personae.inference.storyboard import panel_prompt

    scenes = [{"number": i + 1, "description": f"scene {i + 1}", "shot": name} for i, (name, _) in enumerate(SHOT_LIST)]
    (tmp_path / "yaml").mkdir()
    from_yaml = load_scenes(_write(tmp_path / "yaml", tiny_model[0], scenes))
    csv_path = tmp_path / "scenes.csv"
    csv_path.write_text("number,description,shot\n" + "".join(f"{s['number']},{s['description']},{s['shot']}\n"
                                                               for s in scenes), encoding="utf-8")
    from_csv = load_scenes(csv_path, {"model": str(tiny_model[0])})
    tokens = {"<cu_trg>", "<ms_trg>", "<fs_trg>"}  # the three learned shot tokens, all loaded
    for settings in (from_yaml, from_csv):
        for scene, (name, phrase) in zip(settings.scenes, SHOT_LIST):
            prompt = panel_prompt(scene, settings, tokens)
            assert prompt.startswith(phrase) or prompt.split(" ", 1)[1].startswith(phrase), (name, prompt)
            if phrase not in ("close-up shot", "medium shot", "full shot"):  # ECU never borrows <cu_trg>
                assert "<" not in prompt, (name, prompt)
    # a token only when the file maps one to the kind
    mapped = load_scenes(_write(tmp_path / "yaml", tiny_model[0], scenes[:1],
                                shot_tokens={"close-up": "<cu_trg>", "extreme close-up": "<ecu_trg>"}))
    assert panel_prompt(mapped.scenes[0], mapped, {"<ecu_trg>"}).startswith("<ecu_trg> extreme close-up shot")
    # an unknown name is a UserError that lists the accepted ones, for YAML and CSV alike
    csv_path.write_text("number,description,shot\n1,a roof,bird's eye\n", encoding="utf-8")
    for path in (_write(tmp_path / "yaml", tiny_model[0], [dict(SCENES[0], shot="bird's eye")]), csv_path):
        with pytest.raises(UserError, match="Unknown shot") as err:
            run_storyboard(load_scenes(path, {"model": str(tiny_model[0])}), tmp_path / "never")
        for accepted in ("extreme close-up (ECU, XCU, BCU)", "over-the-shoulder (OTS)", "two shot", "establishing",
                         "extreme wide (EWS, XWS, ELS, XLS)", "full (FS, LS, WS)"):
            assert accepted in str(err.value)
    assert not (tmp_path / "never").exists()


def test_a_csv_storyboard_reaches_the_style_lora_shot_embeddings_and_any_setting(tmp_path, tiny_model):
    """CSV storyboards take what a YAML file does: "# key: value" lines above the header, and on the command line
    --lora (the style LoRA), --style-trigger, --embedding (shot tokens) and --set KEY=VALUE, as the other commands."""
    import json

    from test_generate import _lora_file

    lora = _lora_file(tmp_path / "sketch.safetensors")
    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32)}, str(tmp_path / "cu.safetensors"))
    (tmp_path / "scenes.csv").write_text(
        "# steps: 3\n# width: 64\n# height: 64\n# style_trigger: storyboard sketch\n"
        "number,description,dialogue,shot,angle\n1,a cat on a roof,야옹,CU,low angle\n2,its eye,,ECU,\n",
        encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "personae", "storyboard", tmp_path / "scenes.csv", "--model",
                        tiny_model[0], "--lora", f"{lora}:0.8", "--embedding", f"{tmp_path / 'cu.safetensors'}:<cu_trg>",
                        "--set", "layout.title=Act 1", "--set", "seed_policy=fixed", "--out", tmp_path / "board"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "board/storyboard.json").read_text(encoding="utf-8"))
    settings = record["settings"]
    assert settings["style_lora"] == {"path": str(lora), "weight": 0.8, "unet_weight": None} and settings["steps"] == 3
    assert [e["token"] for e in settings["shot_embeddings"]] == ["<cu_trg>"]
    assert settings["layout"]["title"] == "Act 1" and settings["layout"]["panels_per_row"] == 3  # nested, kept
    assert settings["seed_policy"] == "fixed" and [p["seed"] for p in record["panels"]] == [0, 0]
    cu, ecu = (p["prompt"] for p in record["panels"])
    assert cu.startswith("storyboard sketch, <cu_trg> close-up shot, low angle, a cat on a roof")
    assert ecu.startswith("storyboard sketch, extreme close-up shot, its eye") and "<cu_trg>" not in ecu
    assert 'the extreme close-up panels get no shot token' in " ".join(r.stderr.split())
    from personae.media.png import read_png_text

    params = read_png_text(tmp_path / "board/panels/panel-001.png")["parameters"]
    assert "<lora:sketch:0.8>" in params and "Lora hashes" in params and "TI hashes: \"<cu_trg>" in params
    # the same settings written in the file itself, through the same path
    (tmp_path / "inline.csv").write_text(
        f"# model: {tiny_model[0]}\n# style_lora: {lora}:0.8\n# shot_embeddings: ['{tmp_path / 'cu.safetensors'}']\n"
        "#\n# layout:\n#   title: Act 1\n#,description,shot\n1,a cat,CU\n", encoding="utf-8")
    inline = load_scenes(tmp_path / "inline.csv")
    assert inline.style_lora.path == str(lora) and inline.style_lora.weight == 0.8
    assert inline.shot_embeddings[0].path == str(tmp_path / "cu.safetensors") and inline.layout.title == "Act 1"
    assert [s.description for s in inline.scenes] == ["a cat"]
    (tmp_path / "bad.csv").write_text("# style_lora sketch\nnumber,description\n1,a cat\n", encoding="utf-8")
    with pytest.raises(UserError, match="key: value"):
        load_scenes(tmp_path / "bad.csv", {"model": str(tiny_model[0])})
