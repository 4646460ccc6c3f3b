"""`ezvtb studio`: the local web app (Character, Poser, Live, Speak, Generate, Doctor, OBS overlay).

    ezvtb studio                  # http://127.0.0.1:7870/
    ezvtb studio --open --port 0  # a free port, opened in the default browser

Binds the loopback interface unless --host says otherwise (a warning is printed for any other
address: everyone who can reach it can drive the app). Needs the ``web`` extra (FastAPI, uvicorn).
"""
from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from ezvtb.cli.core_options import add_core_arguments

log = logging.getLogger("ezvtb.studio")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("studio", help="local web app: character, poser, live preview, speak, generate, OBS overlay",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                                                        "only; 0.0.0.0 exposes the app to the network)")
    p.add_argument("--port", type=int, default=7870, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--open", action="store_true", help="open the app in the default web browser")
    p.add_argument("--out-dir", metavar="DIR", help="the one folder the app writes to (recordings, talking videos, "
                                                    "uploads); default: $EZVTB_HOME/studio")
    add_core_arguments(p)
    p.set_defaults(func=run)


def host_warning(host: str) -> str | None:
    """The warning printed when the studio listens on more than this machine (None for loopback)."""
    from ezvtb.live.sources import is_loopback

    if is_loopback(host):
        return None
    return (f"--host {host}: the studio is reachable from other machines; anyone who can reach it can use it "
            f"(read files by path, write into its output folder). Use 127.0.0.1 unless you mean it.")


def run(args: argparse.Namespace) -> int:
    try:
        from ezvtb.studio.server import Studio, start_server
    except ImportError as e:
        raise RuntimeError(f"ezvtb studio needs the web extra: pip install 'ezvtb[web]' ({e})") from None
    from ezvtb import paths
    from ezvtb.image import prepare_image
    from ezvtb.studio.options import values_from_args

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: expected 0..65535, got {args.port}")
    warning = host_warning(args.host)
    if warning:
        log.warning("%s", warning)
    image = prepare_image(args.image) if args.image else None
    out_dir = Path(args.out_dir) if args.out_dir else paths.subdir("studio")
    studio = Studio(values_from_args(args), out_dir, image)
    running = start_server(studio, args.host, args.port, "info" if args.verbose else "warning")
    print(f"ezvtb studio: {running.url}  (OBS overlay: {running.url}overlay; outputs in {studio.folder.root})",
          flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(running.url)
    stop = threading.Event()
    try:
        stop.wait()
    finally:
        running.close()
    return 0
