"""The core's option controls, generated from `ezvtb.options.CoreOptions`.

One source for names, defaults, choices and help: `CoreOptions` (its command-line flags, as `ezvtb run` and
`ezvtb studio` take them, and the `get_core` keywords each flag sets). `option_fields()` lists them for the page;
`core_kwargs_from(values)` turns the page's values (by flag destination) back into `get_core` keywords through
the same flags and `CoreOptions.from_args`, so the page and the command line validate alike.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from ezvtb.options import CoreOptions


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ezvtb studio", add_help=False, exit_on_error=False)
    CoreOptions.add_arguments(p)
    return p


def _actions() -> list[argparse.Action]:
    return [a for a in _parser()._actions if a.option_strings]


def _keywords_by_flag() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for info in CoreOptions.describe():
        if info.flag:
            out.setdefault(info.flag, []).append(info.name)
    return out


def option_fields(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """[{name, flag, kind, default, value, choices, help, sets}] for every core option flag, in the CLI's order
    (``sets``: the `get_core` keywords the flag sets).

    kind: ``bool`` (on/off), ``auto-bool`` (auto/on/off), ``choice``, ``int``, ``float`` or ``text``.
    `values` (by name) fills ``value``; missing names show their default.
    """
    values = values or {}
    keywords = _keywords_by_flag()
    out = []
    for a in _actions():
        if isinstance(a, argparse.BooleanOptionalAction):
            kind = "bool" if a.default is not None else "auto-bool"
        elif isinstance(a, argparse._StoreTrueAction):
            kind = "bool"
        elif a.choices:
            kind = "choice"
        elif a.type is int:
            kind = "int"
        elif a.type is float:
            kind = "float"
        else:
            kind = "text"
        help_text = (a.help or "").replace("%(default)s", str(a.default))
        out.append({"name": a.dest, "flag": a.option_strings[0], "kind": kind, "default": a.default,
                    "value": values.get(a.dest, a.default), "choices": list(a.choices) if a.choices else None,
                    "help": help_text, "sets": keywords.get(a.option_strings[0], [])})
    return out


def flags_from(values: Mapping[str, Any]) -> list[str]:
    """Command-line flags for `values` (by option name); None / "" / "auto" leave an option at its default."""
    by_name = {a.dest: a for a in _actions()}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"core options: unknown option(s) {unknown} (known: {sorted(by_name)})")
    argv: list[str] = []
    for name, v in values.items():
        a = by_name[name]
        flag = a.option_strings[0]
        if v is None or v == "" or (v == "auto" and not a.choices):
            continue
        if isinstance(a, argparse.BooleanOptionalAction):
            on = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "on", "yes")
            argv.append(flag if on else "--no-" + flag[2:])
        elif isinstance(a, argparse._StoreTrueAction):
            if v is True or str(v).lower() in ("1", "true", "on", "yes"):
                argv.append(flag)
        else:
            argv += [flag, str(v)]
    return argv


def parse_values(values: Mapping[str, Any]) -> argparse.Namespace:
    """The parsed options for `values`, validated by the CLI's parser (ValueError naming the flag)."""
    try:
        return _parser().parse_args(flags_from(values))
    except argparse.ArgumentError as e:
        raise ValueError(f"core options: {e}") from None


def core_kwargs_from(values: Mapping[str, Any]) -> dict[str, Any]:
    """`get_core` keywords for the page's option values (validated like the CLI's flags)."""
    return CoreOptions.from_args(parse_values(values)).as_dict()


def values_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The option values (by name) of a parsed `ezvtb studio` command line."""
    return {a.dest: getattr(args, a.dest) for a in _actions() if hasattr(args, a.dest)}
