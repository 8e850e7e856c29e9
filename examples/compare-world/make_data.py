"""The star images and the prior images of the shapes-world comparison (examples/compare-world/README.md).

    python make_data.py WORLD_MODEL OUT [--seed 0]

OUT/stars: the world bench's training set for the star (12 images of a white star on blue and green
backgrounds, close-up and medium shot, each with its caption "a white star on a blue background, close-up"
beside it); OUT/prior: 64 of the world model's own pictures of ordinary captions, captioned (the class images
of prior preservation, as the bench makes them). Both folders must not exist yet: nothing is overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from personae.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the shapes-world model folder (personae model world DIR)")
    parser.add_argument("out", help="where stars/ and prior/ go")
    parser.add_argument("--seed", type=int, default=0, help="which draw of star images (the bench's seed)")
    args = parser.parse_args()

    from personae.cli.main import quiet_libraries
    from personae.inference.session import open_session
    from personae.world.bench import Task, make_data, make_prior
    from personae.world.bench_settings import WorldBench

    quiet_libraries()
    out = Path(args.out)
    stars, prior = out / "stars", out / "prior"
    for folder in (stars, prior):
        if folder.exists():
            raise UserError(f"{folder} already exists.", "Give another OUT folder; nothing is overwritten.")
    bench = WorldBench(model=args.model)
    make_data(bench, Task("dreambooth", "star", args.seed), stars)
    make_prior(bench, open_session(args.model, device="cpu").pipe, prior)
    print(f"{len(list(stars.glob('*.png')))} star images in {stars}, {len(list(prior.glob('*.png')))} prior images "
          f"in {prior}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
