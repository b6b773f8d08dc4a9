"""`vaeserve`: the command line for a running vaeserve server."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vaeserve.client._base import default_target
from vaeserve.client._channel import TlsConfig
from vaeserve.client._cli_output import Progress, info_rows, score_summary, write_csv
from vaeserve.client._client import Client
from vaeserve.client._errors import VaeServeError
from vaeserve.client._models_cli import COMMANDS as MODEL_COMMANDS
from vaeserve.client._models_cli import add_commands as add_model_commands
from vaeserve.client._results import ModelInfo, concat
from vaeserve.client.files import DataFileError, read_array
from vaeserve.client.images import anomaly_panel, save_grid
from vaeserve.client.tables import format_table

__all__ = ["main"]


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
    p = argparse.ArgumentParser(prog="vaeserve", description=__doc__)
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


def _client(args: argparse.Namespace, **kw: Any) -> Client:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TlsConfig(
            ca_cert=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key, server_name=args.tls_server_name
        )
    kw.setdefault("model", getattr(args, "model", None))  # only the commands that send requests to a model
    kw.setdefault("version", getattr(args, "model_version", None))
    timeout: float | Literal["auto"] = "auto" if args.timeout is None else args.timeout
    return Client(
        args.target,
        timeout=timeout,
        tls=tls,
        round_robin=args.round_robin,
        token=args.token,
        connections=args.connections,
        **kw,
    )


def _info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info()
    if args.json:
        print(
            json.dumps(
                {
                    "manifest": info.manifest.model_dump(mode="json"),
                    "execution_provider": info.execution_provider,
                    "limits": info.limits,
                    "defaults": info.defaults,
                    "replica": info.served_by.replica,
                    "server_version": info.server_version,
                },
                indent=2,
            )
        )
        return 0
    print(format_table(["", ""], info_rows(info), title=f"{args.target}: {info.name}:{info.version}"))
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args, retries=0) as client:
        status = client.health()
    print(status)
    return 0 if status == "SERVING" else 1


def _labels_hint(args: argparse.Namespace, x: np.ndarray, client: Client) -> None:
    """A labelled CSV sent without --label-column is one column too wide: say so, not just the shape."""
    if args.file.suffix.lower() != ".csv" or args.label_column is not None or x.ndim != 2:
        return
    dim = client.info().manifest.dim
    if x.shape[1] == dim + 1:
        raise DataFileError(
            f"{args.file}: {x.shape[1]} columns, and the model takes {dim}: if one of them holds labels, "
            "name it with --label-column NAME (or its index)"
        )


def _encode(args: argparse.Namespace) -> int:
    x, _ = read_array(args.file, label_column=args.label_column)
    with _client(args) as client:
        _labels_hint(args, x, client)
        result = client.encode(x, n_samples=args.samples, seed=args.seed, resample=args.resample)
    prefix = args.out or f"{args.file.with_suffix('')}_z"
    outputs = {"mean": result.z_mean, "logvar": result.z_logvar, "samples": result.z_samples, "ess": result.ess}
    for name, value in outputs.items():
        if value is not None:
            np.save(f"{prefix}_{name}.npy", value)
            print(f"wrote {prefix}_{name}.npy {value.shape}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    z, _ = read_array(args.file)
    with _client(args) as client:
        info = client.info()
        result = client.decode(z, sample=args.sample, seed=args.seed)
    prefix = args.out or f"{args.file.with_suffix('')}_x"
    for name, value in {**result.params, "sample": result.x_sample}.items():
        if value is not None:
            np.save(f"{prefix}_{name}.npy", value)
            print(f"wrote {prefix}_{name}.npy {value.shape}")
    if args.png:
        _picture(info, result.params, args.png)
    return 0


def _picture(info: ModelInfo, params: dict[str, np.ndarray], path: Path) -> None:
    if info.manifest.image is None:
        raise DataFileError(f"{path}: the served model is not an image model; write .npy or .csv instead")
    images = params["probs" if "probs" in params else "mean"]
    save_grid(images.reshape(len(images), *info.input_shape), path, columns=8)
    print(f"wrote {path}")


def _sample(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.info()
        result = client.sample(args.n, seed=args.seed, sample_x=args.draw)
    shown = {"probs": result.x_sample} if args.draw and result.x_sample is not None else result.params
    if args.png:
        _picture(info, shown, args.png)
    if args.out or not args.png:
        model_space = shown["probs" if "probs" in shown else "mean"]
        raw = info.manifest.preprocessing.invert(model_space.reshape(len(model_space), -1))
        out = args.out or Path("samples.npy")
        if out.suffix == ".csv":
            np.savetxt(out, raw, delimiter=",", fmt="%.6g")
        else:
            np.save(out, raw.reshape(model_space.shape))
        print(f"wrote {out} ({len(raw)} samples in raw units)")
    return 0


def _score(args: argparse.Namespace) -> int:
    x, _ = read_array(args.file, label_column=args.label_column)
    progress = Progress(len(x) > args.batch_size)
    started = time.perf_counter()
    with _client(args, batch_size=args.batch_size) as client:
        _labels_hint(args, x, client)
        common: dict[str, Any] = {
            "k": args.k,
            "seed": args.seed,
            "alpha": args.alpha,
            "anomaly_scores": args.anomaly_scores,
            "threshold_quantile": args.threshold_quantile,
        }
        if args.stream:
            if args.typicality or args.target_se:
                raise DataFileError("--stream does not take --typicality or --target-se")
            scores = concat(list(client.score_stream(x, progress=progress, **common)))
        else:
            scores = client.score(
                x, typicality=args.typicality, target_se=args.target_se, max_k=args.max_k, progress=progress, **common
            )
    seconds = time.perf_counter() - started
    progress.close()
    if args.out:
        write_csv(scores, args.out)
    summary = score_summary(scores, seconds)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        rows = [(k, v) for k, v in summary.items()]
        print(
            format_table(
                ["", ""], rows, title=f"scored {args.file} with {scores.served_by.model}:{scores.served_by.version}"
            )
        )
        if args.out:
            print(f"wrote {args.out}")
    for warning in scores.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    x, _ = read_array(args.file)
    rows = x[args.start : args.start + args.rows]
    if not len(rows):
        raise DataFileError(f"{args.file}: no inputs from index {args.start}")
    with _client(args) as client:
        info = client.info()
        if info.manifest.image is None:
            raise DataFileError("explain draws images; the served model is not an image model")
        scores = client.score(rows, k=args.k, seed=args.seed, per_dim=True, reconstruction=True)
    shape = (len(rows), *info.input_shape)
    inputs = info.manifest.preprocessing.apply(rows.reshape(len(rows), -1)).reshape(shape)
    captions = []
    for i, s in enumerate(scores):
        line = f"#{args.start + i}  log p(x) {s.log_px:.1f} ± {s.log_px_se:.2f}"
        if s.anomaly_score is not None:
            flag = "  ANOMALY" if s.is_anomaly else ""
            line += f"\nscore {s.anomaly_score:.1f}, p {s.p_value:.3f}{flag}"
        captions.append(line)
    assert scores.reconstruction is not None and scores.per_dim is not None
    anomaly_panel(inputs, scores.reconstruction.reshape(shape), scores.per_dim, captions, args.png)
    print(f"wrote {args.png}: input | reconstruction | anomaly map (red: unlikely pixels), {len(rows)} rows")
    return 0


_COMMANDS = {
    "info": _info,
    "health": _health,
    "encode": _encode,
    "decode": _decode,
    "sample": _sample,
    "score": _score,
    "explain": _explain,
}


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command in MODEL_COMMANDS:
            with _client(args) as client:
                return MODEL_COMMANDS[args.command](args, client)
        return _COMMANDS[args.command](args)
    except VaeServeError as exc:
        print(f"vaeserve: {exc}", file=sys.stderr)
        return 1
    except (DataFileError, OSError) as exc:
        print(f"vaeserve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
