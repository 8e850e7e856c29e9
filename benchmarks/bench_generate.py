"""txt2img: personae (A1111 prompt encoder, per-image generators, metadata) vs a plain diffusers pipeline call.

Same tiny model, sampler, steps, size and batch; wall time and peak RSS growth per image.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

import torch
from diffusers import DPMSolverMultistepScheduler

from personae.cli.main import quiet_libraries
from personae.config.generate import GenerateSettings
from personae.inference.session import open_session
from personae.inference.txt2img import txt2img
from personae.models.tiny import write_tiny_model

STEPS, BATCH, REPEATS = 20, 4, 5


def timed(fn) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(REPEATS):
        fn()
    return (time.perf_counter() - start) / REPEATS


def main() -> None:
    quiet_libraries()
    folder = write_tiny_model(tempfile.mkdtemp() + "/tiny")
    session = open_session(str(folder), "cpu")
    pipe = session.pipe
    settings = GenerateSettings(model=str(folder), prompt="a photo of a cat, (sharp:1.2)", steps=STEPS,
                                batch_size=BATCH, seed=0, sampler="DPM++ 2M Karras")
    ours = timed(lambda: txt2img(settings, session))
    rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def plain():
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(session.base_scheduler, use_karras_sigmas=True)
        pipe("a photo of a cat, sharp", num_inference_steps=STEPS, num_images_per_prompt=BATCH,
             generator=torch.Generator().manual_seed(0))

    theirs = timed(plain)
    print(f"threads {torch.get_num_threads()}, tiny model, {STEPS} steps, batch {BATCH}")
    print(f"{'run':<22}{'s / batch':>12}")
    print(f"{'plain diffusers':<22}{theirs:>12.3f}")
    print(f"{'personae txt2img':<22}{ours:>12.3f}")
    print(f"ratio personae / diffusers: {ours / theirs:.2f}   (peak RSS {rss_ours / 1024:.0f} MB)")


if __name__ == "__main__":
    sys.exit(main())
