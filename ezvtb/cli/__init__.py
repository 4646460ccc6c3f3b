"""The `ezvtb` command line: one entry point, one module per subcommand.

Each module in `SUBCOMMANDS` defines ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed args; returns an exit code). Registering imports only the standard
library: a subcommand imports what it uses (numpy, the core, torch) when it runs, so ``ezvtb --help``
and the commands of a core-only install never load torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

SUBCOMMANDS = ("demo", "export", "doctor", "serve", "run", "bench", "render_batch", "speak", "orbit", "novel_view",
               "t2v",
               "studio")


def _version() -> str:
    from ezvtb import __version__

    return __version__


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or action.required or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _SubcommandParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ezvtb", description="Realtime THA3 character animation engine")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--version", action="version", version=f"ezvtb {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_SubcommandParser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"ezvtb.cli.{name}").register(sub)
    return p


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every writer removes its temporary files."""


def _on_sigterm(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    old = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if isinstance(getattr(args, "backend", None), str):  # before any download or export
            from ezvtb.engines.policy import require_backend

            require_backend(args.backend)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    except (ValueError, FileNotFoundError, RuntimeError, OSError, ImportError) as e:
        from ezvtb.extras import explain

        logging.getLogger("ezvtb").error("%s", explain(e) if isinstance(e, ImportError) else e)
        if args.verbose > 1:
            raise
        return 2
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
