"""`vaeserve-batch score INPUT... --bundle DIR --out OUT.parquet`: bulk scoring on a Ray cluster.

Without --address a local Ray instance starts in this process (and stops with it); with it the run
joins that cluster, whose nodes need vaeserve-batch installed and the input paths readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from vaeserve.batch.cluster import BatchError, Cluster, loopback_only
from vaeserve.batch.inputs import DataFileError, plan_inputs
from vaeserve.batch.scoring import DRAWS_PER_BATCH, RowScorer
from vaeserve.server.engine import BundleError
from vaeserve.server.errors import InvalidArgument

__all__ = ["main", "parse"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaeserve-batch", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sc = sub.add_parser(
        "score",
        help="score files with the server's engine in Ray actors; one Parquet row per input row",
        description="Row i of the whole input (files in the order given, a directory's files sorted) is scored "
        "with seed + i: its numbers are those of a Score request of that row alone with that seed and K.",
    )
    sc.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help=".npy, .csv, Parquet or IDX files, or directories of them"
    )
    sc.add_argument("--bundle", type=Path, required=True, help="the model bundle directory")
    sc.add_argument(
        "--out", type=Path, required=True, help="the Parquet file to write (replaced when the run completes)"
    )
    sc.add_argument("--k", type=int, help="importance samples per row (default: the calibration's K, else 1000)")
    sc.add_argument("--seed", type=int, help="base seed; row i gets seed + i (default: the server's, 0)")
    sc.add_argument("--alpha", type=float, help="flag rows whose conformal p-value is at most alpha (default: 0.01)")
    sc.add_argument(
        "--anomaly-scores",
        type=_names,
        help="anomaly scores, e.g. nll,reconstruction, or none (default: the model's at its calibration's K and "
        "seed, as the server gives them, and none at another --k or --seed; together they add a pass at the "
        "calibration's K per row, two with likelihood_ratio)",
    )
    sc.add_argument("--prior-estimate", action="store_true", help="also the naive estimate with z ~ p(z)")
    sc.add_argument("--label-column", help="CSV or Parquet column to leave out (labels)")
    sc.add_argument("--address", help="join this Ray cluster (e.g. auto, or host:6379) instead of starting one")
    sc.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    sc.add_argument("--actors", type=int, help="scoring actors, one engine each (default: one per CPU)")
    sc.add_argument("--threads", type=int, default=1, help="onnxruntime threads per actor (default: 1)")
    sc.add_argument(
        "--batch-draws", type=int, default=DRAWS_PER_BATCH, help="rows x draws per actor call (sets the batch size)"
    )
    sc.add_argument("--no-progress", action="store_true", help="no progress bar (none is drawn off a terminal)")
    sc.add_argument("--json", action="store_true", help="print the summary as JSON")
    sc.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="let Ray's own output through: its start-up and Ray Data's log lines, the actors' output and Ray's "
        "core warnings (default: only this command's lines; Ray's logs stay in its session directory, by default "
        "/tmp/ray/session_latest/logs)",
    )
    return p


def _names(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    return () if names == ("none",) else names


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    for flag in ("num_cpus", "actors", "threads", "batch_draws"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            _parser().error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.address and args.num_cpus:
        _parser().error("--num-cpus is for a local Ray instance; an existing cluster (--address) has its own")
    return args


def _score(args: argparse.Namespace) -> int:
    from vaeserve.batch.pipeline import run  # imports Ray: after main's loopback_only

    scorer = RowScorer(args.bundle)
    spec = scorer.spec(
        k=args.k,
        seed=args.seed,
        alpha=args.alpha,
        anomaly_scores=args.anomaly_scores,
        prior_estimate=args.prior_estimate,
    )
    for warning in [*spec.warnings, *(scorer.scorer.warnings(spec.alpha) if spec.anomaly_scores else [])]:
        print(f"warning: {warning}", file=sys.stderr)
    plan = plan_inputs(args.inputs, scorer.manifest, label_column=args.label_column)
    if not args.out.parent.is_dir():
        raise DataFileError(f"{args.out}: its directory does not exist")
    cluster = Cluster(args.address, args.num_cpus, args.actors, args.threads)
    summary = run(
        plan,
        scorer,
        spec,
        args.out,
        cluster,
        draws=args.batch_draws,
        progress=False if args.no_progress else None,
        verbose=args.verbose,
    )
    print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.table())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if not args.address:
        loopback_only()
    try:
        return _score(args)
    except (DataFileError, BundleError, InvalidArgument, BatchError, OSError) as exc:
        print(f"vaeserve-batch: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
