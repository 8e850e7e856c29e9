"""One registry of training methods (config/methods.py): the job schema, the loop and the bench read it."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from personae.config.methods import METHODS
from personae.methods import Method, method_class

SRC = Path(__file__).resolve().parents[1] / "src" / "personae"


def test_method_names_are_listed_in_one_place():
    """No module but the registry writes two method names side by side (a list, a Literal, a tuple, a test of
    membership): everything else reads METHODS."""
    names = list(METHODS)
    pairs = [re.compile(rf'["\']{a}["\']\s*[,:|]\s*(\{{[^}}]*\}},?\s*|\w+\(.*?\),?\s*)?["\']{b}["\']', re.S)
             for a, b in itertools.permutations(names, 2)]
    found = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "config/methods.py":
            continue
        text = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(SRC)}: {m.group(0)[:60]!r}" for p in pairs for m in p.finditer(text)]
    assert found == []


def test_a_planted_list_is_caught(tmp_path):
    """The grep above finds the shapes a list of names takes."""
    text = 'if method in ("textual_inversion", "pivotal"):\n'
    pattern = re.compile(r'["\']textual_inversion["\']\s*[,:|]\s*(\{[^}]*\},?\s*|\w+\(.*?\),?\s*)?["\']pivotal["\']')
    assert pattern.search(text)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_has_a_documented_class(name):
    cls = method_class(name)
    assert issubclass(cls, Method) and cls.__module__.startswith("personae.methods.")
    doc = __import__(cls.__module__, fromlist=["x"]).__doc__ or ""
    assert all(f"\n{part}: " in doc for part in ("Trains", "Exports", "Reads")), f"{name}: its module's contract"
    spec = METHODS[name]
    from personae.config.train import TrainJob
    for section in spec.reads:
        assert section in TrainJob.model_fields, (name, section)


def test_a_new_method_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """Register a method that lives in a module of its own: the job schema accepts it and the loop finds it.
    (The schema's Literal is built when config/train.py is imported, so the registry is extended before.)"""
    import importlib
    import sys

    pkg = tmp_path / "extra_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "frozen.py").write_text(
        '"""A method that trains nothing: for the registry test."""\n'
        "from personae.methods.base import Method\n\n\n"
        "class FrozenMethod(Method):\n"
        "    def setup(self, pipe):\n        return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from personae.config.methods import MethodSpec

    monkeypatch.setitem(METHODS, "frozen", MethodSpec("extra_methods.frozen:FrozenMethod", "nothing", reads=()))
    saved = {k: v for k, v in sys.modules.items() if k in ("personae.config.methods", "personae.config.train")}
    try:
        import personae.config.methods as registry
        monkeypatch.setattr(registry, "MethodName", __import__("typing").Literal[tuple(METHODS)])
        sys.modules.pop("personae.config.train")
        train = importlib.import_module("personae.config.train")
        job = train.TrainJob(base_model="m", method="frozen", data={"path": "d"}, output="o")
        assert job.method == "frozen" and method_class("frozen").__name__ == "FrozenMethod"
    finally:
        sys.modules.update(saved)
