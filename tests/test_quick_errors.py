"""A user's mistake is answered before the heavy libraries load, and those libraries stay quiet when they do.

diffusers (which pulls in torch._dynamo), transformers and peft take seconds to import on these machines; a wrong
path or option used to wait for all of them before its one-paragraph answer. These tests hold the mechanism, not a
time: each mistake below is answered in a fresh interpreter with none of them imported (torch may be: the model
file readers need it), and library chatter is still kept off the terminal once they are imported (quiet.py quiets
each library when its import finishes)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("diffusers", "transformers", "peft")

ANSWER_ALL = textwrap.dedent("""
    import contextlib, io, json, sys
    from personae.cli.main import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
        results.append({"argv": argv, "rc": rc, "err": " ".join(err.getvalue().split()),
                        "loaded": [m for m in %r if m in sys.modules]})
    print(json.dumps(results))
""" % (HEAVY,))


def test_a_users_mistake_is_answered_before_the_libraries_load(tmp_path, tiny_model):
    tiny = str(tiny_model[0])
    missing = str(tmp_path / "missing")
    (tmp_path / "scenes.yaml").write_text(
        f"version: 1\nmodel: {missing}\nscenes:\n  - {{number: 1, description: a cat, shot: close-up}}\n")
    (tmp_path / "suite.yaml").write_text(
        f"version: 1\nbase_model: {missing}\nvariants:\n  - {{label: base}}\nprompts: [a cat]\n")
    (tmp_path / "job.yaml").write_text(
        f"version: 1\nbase_model: {tiny}\nmethod: lora\ndata: {{path: {missing}}}\ntrigger: star\n"
        f"output: {tmp_path / 'run'}\n")
    (tmp_path / "a-file").write_text("mine")
    out = str(tmp_path / "out")
    cases = [  # (argv, what the answer says)
        (["generate", "--model", tiny, "--prompt", "a cat", "--width", "65", "--out", out], "multiple of 8"),
        (["generate", "--model", missing, "--prompt", "a cat", "--out", out], "was not found"),
        (["animate", "--model", tiny, "--prompt", "a cat", "--motion-adapter", missing, "--out", out + ".gif"],
         "was not found"),
        (["animate", "--model", missing, "--prompt", "a cat", "--motion-adapter", tiny, "--out", out + ".gif"],
         "was not found"),
        (["storyboard", str(tmp_path / "scenes.yaml"), "--out", out], "was not found"),
        (["compare", str(tmp_path / "suite.yaml"), "--out", out], "was not found"),
        (["merge", tiny, missing, "--out", out], "was not found"),
        (["extract", missing, "--base", tiny, "--out", out + ".safetensors"], "was not found"),
        (["train", str(tmp_path / "job.yaml")], "does not exist"),
        (["world", "bench", "--out", str(tmp_path / "a-file")], "is a file"),
    ]
    done = subprocess.run([sys.executable, "-c", ANSWER_ALL, json.dumps([argv for argv, _ in cases])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for (argv, says), result in zip(cases, json.loads(done.stdout), strict=True):
        assert result["rc"] == 2 and says in result["err"], result
        assert result["loaded"] == [], f"personae {' '.join(argv[:2])}: {result['loaded']} imported before the answer"
    assert (tmp_path / "a-file").read_text() == "mine" and not (tmp_path / "out").exists()


QUIETED = textwrap.dedent("""
    import json, logging, sys
    from personae.quiet import quiet_libraries
    if sys.argv[1] == "before":  # the libraries imported before quiet_libraries() is called
        import diffusers, transformers
    quiet_libraries(downloads=sys.argv[2] == "downloads")
    imported_by_quieting = [m for m in ("diffusers", "transformers") if m in sys.modules]
    import diffusers, transformers
    from huggingface_hub.utils import are_progress_bars_disabled
    print(json.dumps({
        "imported_by_quieting": imported_by_quieting if sys.argv[1] == "after" else [],
        "levels": [diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()],
        "load_bars": [diffusers.utils.logging.is_progress_bar_enabled(),
                      transformers.utils.logging.is_progress_bar_enabled()],
        "download_bars": not are_progress_bars_disabled(),
    }))
""")


def test_libraries_are_quieted_when_they_load_not_before():
    env_free = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    for when in ("after", "before"):
        for downloads in ("downloads", "quiet"):
            done = subprocess.run([sys.executable, "-c", QUIETED, when, downloads], capture_output=True, text=True,
                                  timeout=300, env=env_free)
            assert done.returncode == 0, done.stderr
            state = json.loads(done.stdout)
            assert state == {"imported_by_quieting": [], "levels": [40, 40], "load_bars": [False, False],
                             "download_bars": downloads == "downloads"}, (when, downloads, state)


def test_a_generation_shows_personae_lines_only(tiny_model, tmp_path):
    """What a user sees: personae's own lines. Without quieting, importing the pipeline's modules prints
    transformers' notes about image processors ("requires torchvision ...") before the first of them."""
    done = subprocess.run([sys.executable, "-m", "personae", "generate", "--model", str(tiny_model[0]), "--prompt",
                           "a cat", "--steps", "2", "--width", "64", "--height", "64", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0].startswith("loading folder") and lines[-1].startswith("wrote 1 image"), lines
    assert all(line.startswith(("loading folder", "denoise", "wrote 1 image")) for line in lines), lines


COMPARE_JOB = textwrap.dedent("""
    import sys
    from personae.errors import UserError
    from personae.jobs.compare import run_compare
    from personae.jobs.compare_plan import load_suite
    try:
        run_compare(load_suite(sys.argv[1], {}), sys.argv[2])
    except UserError as exc:
        print(" ".join(str(exc).split()))
""")


def test_compare_checks_its_models_before_it_fetches_the_metrics_models(tmp_path):
    """The job itself (the web UI runs it without the command line's checks): a variant's wrong model path is said
    before the CLIP and DINO models are fetched, which for a user with network is a download of about 0.7 GB."""
    from fake_hub import FakeHub

    suite = tmp_path / "suite.yaml"
    suite.write_text(f"version: 1\nbase_model: {tmp_path / 'missing'}\nvariants:\n  - {{label: base}}\n"
                     "prompts: [a cat]\nmetrics: {clip: someone/clip, dino: someone/dino}\n")
    with FakeHub({}) as hub:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", COMPARE_JOB, str(suite), str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "was not found" in done.stdout and "missing" in done.stdout, done.stdout
    assert hub.requests == [], hub.requests
