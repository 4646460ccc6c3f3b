"""The `ezvtb` command line: one entry point, one module per subcommand.

Each module in `SUBCOMMANDS` defines ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed args; returns an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS = ("demo", "export", "doctor", "serve", "run", "bench", "render_batch", "speak", "orbit", "novel_view", "t2v",
               "studio")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ezvtb", description="Realtime THA3 character animation engine")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"ezvtb.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        logging.getLogger("ezvtb").error("%s", e)
        if args.verbose > 1:
            raise
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
