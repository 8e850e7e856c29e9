"""`personae doctor`: versions, devices, optional parts and known-bad combinations."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae doctor              # read it before filing a bug, and paste it into the report
"""


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="versions, devices, optional parts, known-bad combinations", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Print the versions of torch, diffusers, transformers, peft and accelerate, the "
                                   "device and dtype `auto` picks, free memory and disk, which optional parts are "
                                   "present, and any known-bad combination with what to install instead. "
                                   "Exits 1 when a known-bad combination is found.")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.jobs.doctor import format_report, run_doctor

    report = run_doctor()
    print(format_report(report))
    return 1 if report.problems else 0
