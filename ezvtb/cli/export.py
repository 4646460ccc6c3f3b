"""`ezvtb export`: export the THA3 stage graphs to ONNX (cached under $EZVTB_HOME/onnx)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the THA3 graphs to ONNX")
    p.add_argument("--model", choices=("separable", "standard"), default="separable")
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
