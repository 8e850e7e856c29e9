"""`personae detect TYPE IMAGE OUT.png`: a ControlNet control map on its own."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae detect canny photo.jpg edges.png --option low=50 --option high=150
  personae detect canny photo.jpg edges-512.png --res 512   # as a unit of Processor Res 512 makes it
  personae detect face me.jpg face-map.png
  personae detect pose me.jpg pose-map.png
  personae detect shuffle painting.jpg shuffled.png --seed 7
  personae generate --model ./model --prompt "a knight" --control raw:pose-map.png --controlnet raw=./openpose-controlnet

control types:
{types}
"""


def add_parser(sub) -> None:
    from personae.data.control import CONTROL_TYPES

    p = sub.add_parser("detect", help="write a control map (canny, face, pose, lineart, ...) for ControlNet",
                       description="Draw the control map a ControlNet reads (edges, face landmarks, a pose skeleton) "
                                   "from a photo, offline. Use it to check what --control TYPE:IMAGE will see (with "
                                   "--res, as generate makes it for that Processor Res, before it is fitted to the "
                                   "picture).",
                       epilog=EXAMPLES.format(types="\n".join(f"  {t.name:<18} {t.description}"
                                                               for t in CONTROL_TYPES.values())),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("type", metavar="TYPE", help="control type: " + ", ".join(CONTROL_TYPES))
    p.add_argument("image", metavar="IMAGE", help="the photo")
    p.add_argument("out", metavar="OUT.png", help="where to write the map")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a preprocessor option, e.g. low=50 for canny (repeatable)")
    p.add_argument("--res", type=int, default=None, metavar="PIXELS",
                   help="make the map as generate does for a unit of this Processor Res (--control-res): the photo "
                        "scaled to it on its short side first; default: at the photo's own size")
    p.add_argument("--seed", type=int, default=None,
                   help="a random map's seed (shuffle), taken as generate's --seed takes it; default random")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.png if it exists")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.data.control import option_values
    from personae.jobs.control import run_detect

    options = option_values(args.option, "--option")
    out = run_detect(args.type, args.image, args.out, options, overwrite=args.overwrite, seed=args.seed,
                     res=args.res)
    print(f"wrote {args.type} control map to {out}")
    return 0
