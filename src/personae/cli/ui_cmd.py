"""`personae ui`: the web UI (Gradio) over a workspace folder."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae ui                                   # http://127.0.0.1:7860, workspace ./personae-workspace
  personae ui --workspace ~/personae --port 7861
  personae ui --host 0.0.0.0 --auth me:secret   # reachable from the network: always with --auth

The workspace holds everything the UI reads and writes: models/ (base models, LoRAs, embeddings you add),
uploads/, datasets/ (prepared sets), runs/ (training runs) and outputs/. Nothing outside it is served or written.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="the web UI: prepare, train, generate and more in the browser", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve the web UI. Long work runs one job at a time in a background worker; "
                                   "closing the browser does not stop it, and a restarted UI lists the runs on disk.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="ask for this login (needed when --host is not loopback)")
    p.add_argument("--workspace", default="personae-workspace", metavar="DIR",
                   help="the folder the UI reads and writes (made if missing; default ./personae-workspace)")
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.web.app import serve

    serve(args.workspace, host=args.host, port=args.port, auth=args.auth, share=args.share)
    return 0
