"""`personae doctor`: what this installation is, what `auto` picks, what is optional, what is known to break.

The checks read package metadata and the machine; they never load a model. Known-bad combinations
are data (`KNOWN_BAD`): each names the versions that break and what to install instead.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

CORE = ["torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "huggingface_hub"]
LOCK_FILE = Path(__file__).resolve().parents[3] / "locks" / "personae.txt"  # present in a source checkout


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(version: str) -> tuple[int, ...]:
    """'5.24.0' -> (5, 24, 0); '2.13.0+cpu' -> (2, 13, 0); pre-release tails are dropped."""
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_versions() -> dict[str, str]:
    """Every distribution installed in this environment's site-packages, by normalised name.

    Only site folders count: setuptools appends its `_vendor` folder (older importlib_metadata, packaging,
    zipp, jaraco.* with their dist-info) to sys.path once anything imports it, and those are not installed.
    """
    folders = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=list(dict.fromkeys(folders))):
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalise(name), dist.version)
    return found


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalise(name)] = version.strip()
    return pins


def lock_differences(pins: dict[str, str], installed: dict[str, str]) -> dict[str, tuple[str, str | None]]:
    """{package: (locked, installed or None)} for every locked package installed at another version."""
    return {n: (v, installed.get(n)) for n, v in pins.items() if (installed.get(n) or "").split("+")[0] != v}


@dataclass(frozen=True)
class KnownBad:
    what: str  # the combination, as a user would search for it
    applies: object  # callable(versions: dict[str, str]) -> bool
    fix: str


def _v(versions: dict[str, str], name: str) -> tuple[int, ...] | None:
    return version_tuple(versions[name]) if name in versions else None


def _torchvision_broken(versions: dict[str, str]) -> bool:
    if "torchvision" not in versions:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure is the problem being reported
        return True
    return False


KNOWN_BAD = [
    KnownBad("transformers >= 5.24 with peft < 0.22: adding a text-encoder LoRA fails with "
             "'please use a version >= 0.22.0' (text-encoder LoRA and pivotal training crash)",
             lambda v: (_v(v, "transformers") or ()) >= (5, 24) and (_v(v, "peft") or (9,)) < (0, 22),
             'pip install "transformers==5.23.0" (or peft >= 0.22 once it is released)'),
    KnownBad("opencv 5.x ships no Haar cascades: `prepare --crop face` cannot find faces",
             lambda v: any((_v(v, n) or ()) >= (5,) for n in ("opencv-python-headless", "opencv-python",
                                                                "opencv-contrib-python")),
             'pip install "opencv-python-headless>=4.8,<5"'),
    KnownBad("mediapipe newer than 0.10.21 ships no models: face and pose control maps and the face fix fail",
             lambda v: (_v(v, "mediapipe") or ()) > (0, 10, 21),
             'pip install --no-deps "mediapipe==0.10.21"'),
    KnownBad("a torchvision that does not import beside this torch ('operator torchvision::nms does not exist'): "
             "libraries that try it first fail", _torchvision_broken,
             "pip uninstall torchvision (personae does not need it), or install the torchvision built for this torch"),
    KnownBad("diffusers older than 0.42: personae's loaders and exports are tested with 0.42",
             lambda v: (_v(v, "diffusers") or (99,)) < (0, 42), 'pip install "diffusers>=0.42"'),
]


def known_problems(versions: dict[str, str]) -> list[KnownBad]:
    return [rule for rule in KNOWN_BAD if rule.applies(versions)]


@dataclass
class Optional:
    name: str
    present: bool
    detail: str  # where it was found, or what it is for


@dataclass
class Report:
    versions: dict[str, str]
    python: str
    device: str
    dtype: str
    accelerator: str
    memory: str
    disk: str
    optional: list[Optional] = field(default_factory=list)
    lock: str = ""
    problems: list[KnownBad] = field(default_factory=list)


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _optional_parts(versions: dict[str, str]) -> list[Optional]:
    from personae.media.fonts import font_for

    try:
        font = font_for("한국어 Русский")
    except Exception:  # noqa: BLE001 - no font is a finding, not a failure of the doctor
        font = ""
    mediapipe = versions.get("mediapipe")
    chromium = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                     if p and Path(p).is_file()), "")
    return [
        Optional("mediapipe", mediapipe == "0.10.21", f"{mediapipe or 'not installed'}; face and pose control maps "
                                                      "and the face fix (--ad-model) need 0.10.21 (the last release "
                                                      "with its models)"),
        Optional("dlib", _present("dlib") and _present("face_recognition_models"), "face identity in comparisons (face: true)"),
        Optional("CJK font", bool(font), font or "storyboards with Korean / Chinese / Japanese dialogue (apt install fonts-nanum)"),
        Optional("chromium", bool(chromium), chromium or "the browser tests (apt install chromium)"),
        Optional("tensorboard", _present("tensorboard"), "TensorBoard event files in run folders"),
        Optional("prodigyopt", _present("prodigyopt"), "optimizer: prodigy"),
        Optional("bitsandbytes", _present("bitsandbytes"), "optimizer: adamw8bit (CUDA only)"),
        Optional("xformers", _present("xformers"), "memory-efficient attention (PyTorch's SDPA is used without it)"),
    ]


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _memory(torch) -> tuple[str, str]:
    import psutil

    vm = psutil.virtual_memory()
    memory = f"RAM {_gib(vm.total)} total, {_gib(vm.available)} available"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        memory += f"; VRAM {_gib(total)} total, {_gib(free)} free ({torch.cuda.get_device_name()})"
    disks = []
    for label, path in (("here", Path.cwd()), ("Hugging Face cache", Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")))):
        probe = next((p for p in [path, *path.parents] if p.exists()), Path("/"))
        disks.append(f"{_gib(shutil.disk_usage(probe).free)} free {label} ({path})")
    return memory, "; ".join(disks)


def run_doctor() -> Report:
    import torch

    from personae.models.device import pick_device, pick_dtype

    versions = installed_versions()
    device = pick_device("auto")
    dtype = pick_dtype("auto", device)
    cuda = f"CUDA {torch.version.cuda} ({torch.cuda.device_count()} GPU)" if torch.cuda.is_available() else (
        f"CUDA build {torch.version.cuda}, no GPU visible" if torch.version.cuda else "CPU build, no CUDA")
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    memory, disk = _memory(torch)
    if LOCK_FILE.is_file():
        pins = read_lock()
        diff = lock_differences(pins, versions)
        lock = (f"every one of the {len(pins)} packages in {LOCK_FILE.name} is installed at its locked version"
                if not diff else "differs from the tested lock: " + ", ".join(
                    f"{n} {have or 'missing'} (locked {want})" for n, (want, have) in sorted(diff.items())))
    else:
        lock = "no lock file beside this install (installed from a wheel): the ranges in its metadata apply"
    return Report(versions=versions, python=f"{sys.version.split()[0]} ({sys.prefix})", device=str(device),
                  dtype={torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype], accelerator=f"{cuda}; MPS {'yes' if mps else 'no'}",
                  memory=memory, disk=disk, optional=_optional_parts(versions), lock=lock,
                  problems=known_problems(versions))


def format_report(report: Report) -> str:
    from personae import __version__

    lines = [f"personae {__version__}", f"  {'python':<16}{report.python}"]
    lines += [f"  {name:<16}{report.versions.get(normalise(name), 'not installed')}" for name in CORE]
    lines += [f"  {'accelerator':<16}{report.accelerator}",
              f"  {'auto picks':<16}device {report.device}, dtype {report.dtype}",
              f"  {'memory':<16}{report.memory}", f"  {'disk':<16}{report.disk}",
              f"  {'lock':<16}{report.lock}", "optional parts:"]
    lines += [f"  {'yes' if o.present else 'no ':<4}{o.name:<13}{o.detail}" for o in report.optional]
    if report.problems:
        lines.append("known problems with this combination:")
        for p in report.problems:
            lines += [f"  - {p.what}", f"    fix: {p.fix}"]
    else:
        lines.append("known problems with this combination: none")
    return "\n".join(lines)
