"""The `vaeserve` command line's arguments: every command's options, and the connection options that may
come before or after the command."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vaeserve.client._base import default_target
from vaeserve.client._models_cli import add_commands as add_model_commands

__all__ = ["parse"]

DESCRIPTION = "`vaeserve`: the command line for a running vaeserve server."

# The connection options, taken before or after the command; their defaults apply once parsing is done.
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "target": None,  # $VAESERVE_TARGET, else localhost:50051 (default_target)
    "timeout": None,
    "round_robin": False,
    "tls_ca": None,
    "tls_cert": None,
    "tls_key": None,
    "tls_server_name": None,
    "token": None,
    "connections": 1,
}


def _add_connection(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: an option left out after the command does not undo one given before it.
    s = argparse.SUPPRESS
    p.add_argument(
        "--target",
        default=s,
        help="server address host:port, or dns:///name:port (default: $VAESERVE_TARGET, else localhost:50051)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=s,
        help="deadline per call in seconds (default: 60 s, and a score request's grows with its inputs x K)",
    )
    p.add_argument("--round-robin", action="store_true", default=s, help="spread calls over every address")
    p.add_argument(
        "--connections",
        type=int,
        default=s,
        help="connections to spread a command's requests over (a server's --workers each serve some; default 1)",
    )
    p.add_argument("--tls-ca", type=Path, default=s, help="PEM CA bundle to verify the server (enables TLS)")
    p.add_argument("--tls-cert", type=Path, default=s, help="PEM client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, default=s, help="PEM client key (mutual TLS)")
    p.add_argument("--tls-server-name", default=s, help="name expected in the server certificate")
    p.add_argument("--token", default=s, help="bearer token for a server with --auth-tokens (default: $VAESERVE_TOKEN)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaeserve", description=DESCRIPTION)
    _add_connection(p)
    sub = p.add_subparsers(dest="command", required=True)
    # What a request asks for: a server with a model repository serves several models and versions.
    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", metavar="NAME", help="the model to use (default: the server's default model)")
    model.add_argument("--model-version", metavar="V", help="that model's version (default: its newest ready one)")

    info = sub.add_parser("info", parents=[model], help="the served model's metadata")
    info.add_argument("--json", action="store_true", help="print the manifest and serving info as JSON")

    sub.add_parser("health", help="standard gRPC health check; exit status 0 only when SERVING")
    add_model_commands(sub)

    enc = sub.add_parser("encode", parents=[model], help="posterior mean and log-variance of each input -> .npy files")
    enc.add_argument("file", type=Path, help="inputs in raw units: .npy, .csv or MNIST IDX")
    enc.add_argument("--out", help="output prefix (default: FILE's stem + '_z'); writes PREFIX_mean.npy ...")
    enc.add_argument("--samples", type=int, default=0, help="also draw this many z per input")
    enc.add_argument("--resample", action="store_true", help="importance-resample the draws toward p(z|x)")
    enc.add_argument("--seed", type=int)
    enc.add_argument("--label-column", help="CSV column to drop (labels)")

    dec = sub.add_parser(
        "decode", parents=[model], help="latents -> parameters of p(x|z) as .npy files (and a PNG for images)"
    )
    dec.add_argument("file", type=Path, help="latents [N, L] as .npy or .csv")
    dec.add_argument("--out", help="output prefix (default: FILE's stem + '_x'); writes PREFIX_<param>.npy")
    dec.add_argument("--sample", action="store_true", help="also draw x ~ p(x|z)")
    dec.add_argument("--seed", type=int)
    dec.add_argument("--png", type=Path, help="picture of the decoded means (image models)")

    smp = sub.add_parser("sample", parents=[model], help="z ~ N(0, I), decoded")
    smp.add_argument("-n", type=int, default=64)
    smp.add_argument("--seed", type=int)
    smp.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing its mean")
    smp.add_argument("--png", type=Path, help="grid picture (image models)")
    smp.add_argument("--out", type=Path, help="samples in raw units as .npy or .csv")

    sc = sub.add_parser("score", parents=[model], help="ELBO, log p(x) +- se, ESS and anomaly scores per input")
    sc.add_argument("file", type=Path, help="inputs in raw units: .npy, .csv or MNIST IDX")
    sc.add_argument("--k", type=int, help="importance samples per input (default: the server's)")
    sc.add_argument("--seed", type=int)
    sc.add_argument(
        "--alpha", type=float, help="flag inputs whose conformal p-value is at most alpha (default: the server's)"
    )
    sc.add_argument("--threshold-quantile", type=float, help=argparse.SUPPRESS)  # older spelling: alpha = 1 - q
    sc.add_argument(
        "--anomaly-scores",
        type=_names,
        help="anomaly scores to compute, e.g. nll,reconstruction (default: the model's, when K is its calibration's)",
    )
    sc.add_argument("--typicality", action="store_true", help="also test whether the file as a whole is typical")
    sc.add_argument("--target-se", type=float, help="adaptive K: double K per input until log_px_se <= this")
    sc.add_argument("--max-k", type=int, help="most draws per input with --target-se (default: the server's max_k)")
    sc.add_argument("--batch-size", type=int, default=256, help="inputs per request")
    sc.add_argument("--stream", action="store_true", help="use the ScoreStream RPC (one call for the file)")
    sc.add_argument("--out", type=Path, help="per-input results as CSV")
    sc.add_argument("--label-column", help="CSV column to drop (labels)")
    sc.add_argument("--json", action="store_true", help="print the summary as JSON")

    ex = sub.add_parser(
        "explain", parents=[model], help="input, reconstruction and per-pixel anomaly map per input (images)"
    )
    ex.add_argument("file", type=Path)
    ex.add_argument("--png", type=Path, required=True)
    ex.add_argument("--rows", type=int, default=8, help="how many inputs (from --start)")
    ex.add_argument("--start", type=int, default=0)
    ex.add_argument("--k", type=int)
    ex.add_argument("--seed", type=int)
    for command in sub.choices.values():
        _add_connection(command)
    return p


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, connection options before or after the command; --token defaults to $VAESERVE_TOKEN
    and --target to $VAESERVE_TARGET."""
    args = _parser().parse_args(argv)
    for name, default in _CONNECTION_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, os.environ.get("VAESERVE_TOKEN") or None if name == "token" else default)
    if args.target is None:
        args.target = default_target()
    return args
