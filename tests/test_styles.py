"""A1111's prompt styles (styles.csv): read as A1111 reads the file, merged as A1111 merges them."""

import numpy as np
import pytest

from personae.config.generate import GenerateSettings
from personae.data.styles import apply_styles, merge_prompt, read_styles
from personae.errors import UserError

STYLES = ('\ufeffname,prompt,negative_prompt\n'  # A1111 writes a BOM (utf-8-sig)
          'Cinematic,"{prompt}, cinematic still, shallow depth of field","cartoon, drawing"\n'
          'Film grain, "film grain, kodak portra", blurry\n'  # a space after the comma: skipped, as A1111 does
          'Empty,,\n')


def _styles(tmp_path, text=STYLES):
    path = tmp_path / "styles.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_style_wraps_the_prompt_at_its_placeholder_or_follows_it():
    """A1111's merge_prompts, case by case."""
    assert merge_prompt("{prompt}, masterpiece", "a cat") == "a cat, masterpiece"
    assert merge_prompt("oil painting", "a cat") == "a cat, oil painting"
    assert merge_prompt("oil painting", "  ") == "oil painting"
    assert merge_prompt("", "a cat") == "a cat"
    assert merge_prompt("before {prompt} after {prompt}", "x") == "before x after x"


def test_styles_file_is_read_as_a1111_reads_it(tmp_path):
    styles = read_styles(str(_styles(tmp_path)))
    assert styles["Cinematic"].prompt == "{prompt}, cinematic still, shallow depth of field"
    assert styles["Film grain"].prompt == "film grain, kodak portra" and styles["Film grain"].negative == "blurry"
    assert styles["Empty"].prompt == "" and styles["Empty"].negative == ""
    webui = tmp_path / "webui"
    webui.mkdir()
    _styles(webui, "name,text\nOld,sketch\n")  # the old two-column layout: text is the prompt
    assert read_styles(str(webui))["Old"].prompt == "sketch"  # the webui folder: its styles.csv
    prompt, negative = apply_styles("a cat", "ugly", ["Cinematic", "Film grain"], str(tmp_path / "styles.csv"))
    assert prompt == "a cat, cinematic still, shallow depth of field, film grain, kodak portra"
    assert negative == "ugly, cartoon, drawing, blurry"


def test_an_unknown_style_or_a_missing_file_is_one_paragraph(tmp_path):
    path = _styles(tmp_path)
    with pytest.raises(UserError, match=r'--style "Cinematc" is not in .*styles.csv. Did you mean "Cinematic"\?'):
        apply_styles("a cat", "", ["Cinematc"], str(path))
    with pytest.raises(UserError, match="no styles file was given"):
        apply_styles("a cat", "", ["Cinematic"], None)
    with pytest.raises(UserError, match="is not a file"):
        apply_styles("a cat", "", ["Cinematic"], str(tmp_path / "nowhere.csv"))
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="holds no styles"):
        apply_styles("a cat", "", ["Cinematic"], str(_styles(tmp_path / "other", "title,body\n")))


def test_a_styled_picture_is_the_picture_of_its_written_out_prompt_and_its_png_reproduces_it(tiny_model, tiny_session,
                                                                                             tmp_path):
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    base = {"model": str(tiny_model[0]), "prompt": "a cat", "negative": "ugly", "steps": 3, "seed": 5, "width": 64,
            "height": 64}
    styled = txt2img(GenerateSettings(**base, styles=["Cinematic", "Film grain"],
                                      styles_file=str(_styles(tmp_path))), tiny_session)[0]
    written = txt2img(GenerateSettings(**{**base, "prompt": "a cat, cinematic still, shallow depth of field, film "
                                          "grain, kodak portra", "negative": "ugly, cartoon, drawing, blurry"}),
                      tiny_session)[0]
    assert np.array_equal(np.asarray(styled.image), np.asarray(written.image))
    prompt, negative, _ = parse_parameters(styled.parameters)
    assert prompt.startswith("a cat, cinematic still") and negative == "ugly, cartoon, drawing, blurry"
    assert styled.settings.styles == [] and styled.settings.prompt == prompt  # applied once, never again
    plain = txt2img(GenerateSettings(**base), tiny_session)[0]
    assert not np.array_equal(np.asarray(styled.image), np.asarray(plain.image))
    png = tmp_path / "a1111.png"
    save_png(styled.image, png, styled.parameters)  # A1111's text alone reproduces it, with no styles file
    again = txt2img(GenerateSettings(**{**settings_from_png(png), "model": str(tiny_model[0])}), tiny_session)[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(styled.image))


def test_the_command_line_takes_styles_and_refuses_a_missing_file_without_a_traceback(tmp_path, tiny_model, capsys):
    from personae.cli.main import main

    code = main(["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--style", "Cinematic",
                 "--styles-file", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "--styles-file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
