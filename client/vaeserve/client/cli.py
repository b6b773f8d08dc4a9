"""`vaeserve`: the command line for a running vaeserve server: each command's handler, and `main`.

Its arguments are declared in `_cli_args`, its tables and CSV made in `_cli_output`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vaeserve.api.datafiles import DataFileError, read_array
from vaeserve.api.tables import format_table
from vaeserve.client._channel import TlsConfig
from vaeserve.client._cli_args import parse
from vaeserve.client._cli_output import Progress, info_rows, score_summary, write_csv
from vaeserve.client._client import Client
from vaeserve.client._errors import VaeServeError
from vaeserve.client._models_cli import COMMANDS as MODEL_COMMANDS
from vaeserve.client._results import ModelInfo, concat
from vaeserve.client.images import anomaly_panel, save_grid

__all__ = ["main"]


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
