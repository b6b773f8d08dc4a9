"""`vaeserve-train calibrate`: a bundle's anomaly calibration again, or topped up, without retraining."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from vaeserve.api.bundle import update_manifest
from vaeserve.api.manifest import Calibration
from vaeserve.server.engine import EnsembleEngine
from vaeserve.server.engine.bundle import Bundle, load_bundle
from vaeserve.training.crossfit import calibrate_members
from vaeserve.training.data import select_classes
from vaeserve.training.evaluate import calibrate
from vaeserve.training.pipeline import bundle_folds, bundle_splits, cpu_engine, cpu_scorer, load_for_bundle

__all__ = ["recalibrate"]


def recalibrate(args: argparse.Namespace) -> None:
    """`vaeserve-train calibrate BUNDLE [DATA] [--k K] [--seed S] [--classes ...] [--labels ...] [--add]`."""
    bundle = load_bundle(args.bundle)
    if bundle.manifest.ensemble and not args.add:
        _recalibrate_ensemble(bundle, args)
        return
    current = bundle.manifest.calibration
    k = args.k or (current.k if current else 1000)
    standardize_on = None
    if args.data is None:
        splits = bundle_splits(bundle)
        dataset = bundle.manifest.training.dataset  # type: ignore[union-attr]
        raw, name = splits.calib, f"{dataset} (calib split)"
        standardize_on = (splits.val, f"{dataset} (validation split)")
    else:
        data = load_for_bundle(bundle, args.data, labels=args.labels)
        raw = data.x if args.classes is None else select_classes(data, list(args.classes))
        name = data.name
        if not args.add and (current is None or current.standardization is None):
            # `combined` is standardized on rows apart from those it is calibrated on: 30 % of DATA, at random.
            order = np.random.default_rng(args.seed).permutation(len(raw))
            held = max(1, int(0.3 * len(raw)))
            standardize_on = (raw[order[:held]], f"{name} (30 % held out for the standardization)")
            raw = raw[order[held:]]
    scorer = cpu_scorer(bundle)
    if args.add:
        if current is None:
            raise ValueError(f"{bundle.path}: no calibration to add to; run calibrate without --add")
        if args.k not in (None, current.k):
            raise ValueError(f"--add keeps the calibration's K={current.k}; leave --k out")
        calibration = scorer.add(scorer.engine.prepare(raw), name)
        done = f"added {len(raw)} inputs of {name} to the calibration of {bundle.path}: now {calibration.n}"
    else:
        calibration = calibrate(
            scorer,
            raw,
            k=k,
            seed=args.seed,
            dataset=name,
            standardize_on=standardize_on,
            standardization=None if standardize_on else current.standardization if current else None,
        )
        done = f"recalibrated {bundle.path} on {len(raw)} inputs of {name}"
    _report_calibration(bundle, calibration, done)


def _recalibrate_ensemble(bundle: Bundle, args: argparse.Namespace) -> None:
    """An ensemble's calibration again: on its own folds (new K or seed), or on DATA's rows, which no member
    trained on, dealt to the members in turn (each keeps the standardization of its validation rows)."""
    current = bundle.manifest.calibration
    engine = cpu_engine(bundle)
    assert isinstance(engine, EnsembleEngine)
    k = args.k or (current.k if current else 1000)
    members = engine.size
    if args.data is None:
        folds = bundle_folds(bundle)
        rows = [folds.calib(f) for f in range(members)]
        val = [folds.member(f)[1] for f in range(members)]
        name = f"{folds.data.name} (each member's fold)"
    else:
        data = load_for_bundle(bundle, args.data, labels=args.labels)
        raw = data.x if args.classes is None else select_classes(data, list(args.classes))
        rows, name = [raw[f::members] for f in range(members)], data.name
        val = None
        if current is None or current.standardizations is None:
            own = bundle_folds(bundle)
            val = [own.member(f)[1] for f in range(members)]
    calibration = calibrate_members(
        engine,
        rows,
        k=k,
        seed=args.seed,
        dataset=name,
        val_rows=val,
        standardizations=current.standardizations if current and val is None else None,
    )
    _report_calibration(bundle, calibration, f"recalibrated the {members} members of {bundle.path} on {name}")


def _report_calibration(bundle: Bundle, calibration: Calibration, done: str) -> None:
    update_manifest(bundle.path, calibration=calibration.model_dump())
    q = np.quantile(calibration.scores["nll"], [0.5, 0.95, 0.99])
    print(
        f"{done} (K={calibration.k}, seed {calibration.seed}; scores {', '.join(calibration.scores)}): "
        f"-log p(x) median {q[0]:.2f}, 95th pct {q[1]:.2f}, 99th pct {q[2]:.2f}; "
        f"smallest alpha {calibration.min_alpha:.3g}"
    )
    small = calibration.too_small_for(0.01)
    if small:
        print(f"warning: {small}", file=sys.stderr)
