"""`ezvtb serve`: run one core in its own process for one client (protocol: docs/ipc.md), or with
``--ray [ADDRESS]`` cores for many clients on a Ray cluster (`ezvtb.cluster.live`)."""
from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve one core to another process over stdio or shared memory",
        description="Builds a core with ezvtb.get_core(**options) and serves one client with the versioned "
                    "ezvtb IPC protocol (docs/ipc.md); ezvtb.ipc.Client speaks it. The server exits when its "
                    "client disconnects, on SHUTDOWN or on SIGTERM, removing its socket and shared memory.")
    p.add_argument("--transport", choices=("stdio", "shm"), default="stdio",
                   help="stdio: messages and frames on stdin/stdout (logs on stderr); shm: control messages on a "
                        "Unix socket, frames in a shared-memory ring (default: %(default)s)")
    p.add_argument("--engine", choices=("core", "echo"), default="core",
                   help="core: ezvtb.get_core(**options); echo: no model, returns the character image moved by the "
                        "head pose, for testing an integration without weights or a GPU (default: %(default)s)")
    p.add_argument("--options", default="{}", metavar="JSON",
                   help='get_core keyword arguments as a JSON object, e.g. \'{"use_interpolation": false}\'')
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="one get_core option (VALUE parsed as JSON when it is JSON, else a string); repeatable, "
                        "wins over --options")
    p.add_argument("--socket", metavar="PATH",
                   help="shm: Unix socket path to listen on (default: a new private temporary directory; the path "
                        "is printed on stdout)")
    p.add_argument("--slots", type=int, default=3, help="shm: frame slot groups in the ring (default: %(default)s)")
    p.add_argument("--message-timeout", type=float, default=5.0, metavar="S",
                   help="drop a message that stops arriving midway after S seconds (default: %(default)s)")
    p.add_argument("--accept-timeout", type=float, default=120.0, metavar="S",
                   help="shm: exit if no client connects within S seconds (default: %(default)s)")
    g = p.add_argument_group("Ray cluster (ezvtb.cluster; needs the cluster extra)")
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="serve cores to many clients on Ray instead (ADDRESS: HOST:PORT of `ray start --head`, or "
                        "auto; omitted: RAY_ADDRESS, a cluster on this machine, else a new local instance); clients: "
                        "ezvtb.cluster.Client.connect(ADDRESS)")
    g.add_argument("--replicas", type=int, default=1, help="--ray: replica actors (default: %(default)s)")
    g.add_argument("--cores-per-replica", type=int, default=1, help="--ray: cores (characters) per replica")
    g.add_argument("--cpus-per-replica", type=float, default=1.0, help="--ray: Ray CPUs per replica")
    g.add_argument("--gpus-per-replica", type=float, default=0.0,
                   help="--ray: Ray GPUs per replica; a fraction shares a GPU, e.g. 0.25 (default: %(default)s)")
    g.add_argument("--name", default="ezvtb", help="--ray: service name in namespace ezvtb (default: %(default)s)")
    p.add_argument("--remove-socket-dir", action="store_true",
                   help="shm: on exit also remove the directory of --socket if it is empty (for a private "
                        "directory made for this server; ezvtb.ipc.Client.spawn passes it)")
    p.set_defaults(func=run)


def parse_options(options_json: str, pairs: list[str]) -> dict[str, Any]:
    """--options JSON and -o KEY=VALUE pairs -> get_core keyword arguments."""
    try:
        opts = json.loads(options_json)
    except ValueError as e:
        raise ValueError(f"--options: expected a JSON object, got {options_json!r} ({e})") from None
    if not isinstance(opts, dict):
        raise ValueError(f"--options: expected a JSON object, got {type(opts).__name__}")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {pair!r}")
        try:
            opts[key] = json.loads(value)
        except ValueError:
            opts[key] = value
    return opts


def check_args(args: argparse.Namespace) -> None:
    """Timeouts finite and > 0, the socket's folder present: before any core is built."""
    import math
    from pathlib import Path

    for flag, v in (("--accept-timeout", args.accept_timeout), ("--message-timeout", args.message_timeout)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{flag}: expected a number of seconds > 0, got {v}")
    if args.socket:
        folder = Path(args.socket).parent
        if not folder.is_dir():
            raise ValueError(f"--socket: the folder {str(folder)!r} of {args.socket!r} does not exist")


def run(args: argparse.Namespace) -> int:
    from ezvtb.ipc.server import serve

    check_args(args)
    options = parse_options(args.options, args.option)
    if args.ray is not None:
        from ezvtb.cluster.live import serve_forever

        return serve_forever(args.ray or None, options, engine=args.engine, name=args.name, replicas=args.replicas,
                             cores_per_replica=args.cores_per_replica, cpus_per_replica=args.cpus_per_replica,
                             gpus_per_replica=args.gpus_per_replica, announce=lambda line: print(line, flush=True))
    if args.transport == "stdio" and args.socket:
        raise ValueError("--socket: only used with --transport shm")
    return serve(args.transport, options, engine=args.engine, socket_path=args.socket, slots=args.slots,
                 message_timeout=args.message_timeout, accept_timeout=args.accept_timeout,
                 announce=lambda line: print(line, flush=True), remove_socket_dir=args.remove_socket_dir)
