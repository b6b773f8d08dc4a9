"""`vaeserve models`, `load` and `unload`: a model repository's versions from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable

from vaeserve.api.tables import format_table
from vaeserve.client._base import LOAD_TIMEOUT_S
from vaeserve.client._client import Client
from vaeserve.client._results import ModelStatus

__all__ = ["COMMANDS", "add_commands"]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser("models", help="every model and version the server knows, with its state")
    models.add_argument("name", nargs="?", help="only this model's versions")

    load = sub.add_parser(
        "load", help="load a model from the server's repository by its version policy; exit status 1 if one FAILED"
    )
    load.add_argument("name")

    unload = sub.add_parser("unload", help="retire a model (or one version) once its requests in flight finish")
    unload.add_argument("name")
    unload.add_argument("--version", help="only this version (default: every version of the model)")
    for command in (models, load, unload):
        command.add_argument("--json", action="store_true", help="print the statuses as JSON")


def _models(args: argparse.Namespace, client: Client) -> int:
    statuses = client.list_models(args.name)
    _print(args, statuses, f"{args.target}: " + (f"versions of {args.name}" if args.name else "models"))
    return 0


def _load(args: argparse.Namespace, client: Client) -> int:
    # --timeout covers loading and warm-up (default: LoadModel's own, minutes)
    statuses = client.load_model(args.name, timeout=args.timeout or LOAD_TIMEOUT_S)
    _print(args, statuses, f"{args.target}: loaded {args.name}")
    return 1 if any(s.state == "FAILED" for s in statuses) else 0


def _unload(args: argparse.Namespace, client: Client) -> int:
    statuses = client.unload_model(args.name, args.version)
    what = f"{args.name}:{args.version}" if args.version else args.name
    _print(args, statuses, f"{args.target}: unloaded {what}", empty=f"no versions of {args.name} left")
    return 0


def _print(args: argparse.Namespace, statuses: list[ModelStatus], title: str, *, empty: str = "no models") -> None:
    if args.json:
        print(json.dumps({"models": [dataclasses.asdict(s) for s in statuses]}, indent=2))
    elif not statuses:
        print(f"{title}: {empty}")
    else:
        rows = [(s.name, s.version, s.state, s.in_flight, s.reason) for s in statuses]
        print(format_table(["name", "version", "state", "in flight", "reason"], rows, title=title))


COMMANDS: dict[str, Callable[[argparse.Namespace, Client], int]] = {
    "models": _models,
    "load": _load,
    "unload": _unload,
}
