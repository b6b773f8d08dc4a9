"""`vaeserve-train`: train a VAE and export a bundle; evaluate, recalibrate or compare a bundle."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from vaeserve.api.datafiles import DataFileError
from vaeserve.api.manifest import TrainingSummary
from vaeserve.api.tables import format_table
from vaeserve.server.engine.bundle import BundleError, load_bundle
from vaeserve.training.baselines import compare
from vaeserve.training.data import load_dataset
from vaeserve.training.evaluate import active_units, evaluate, save_pictures
from vaeserve.training.export import ExportError
from vaeserve.training.models import VAEConfig
from vaeserve.training.pipeline import (
    RunConfig,
    RunReport,
    bundle_splits,
    cpu_engine,
    run,
)
from vaeserve.training.presets import MIN_BATCHES, Preset, preset_for
from vaeserve.training.recalibrate import recalibrate
from vaeserve.training.train import TrainConfig

__all__ = ["main"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vaeserve-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a VAE and export a model bundle")
    t.add_argument("data", help="digits, mnist5k, breast-cancer, or a .npy / .csv / IDX file")
    t.add_argument("--out", type=Path, help="bundle directory (default: models/<data>)")
    t.add_argument("--name", help="model name in the manifest (default: from the data)")
    t.add_argument("--version", default="1", help="model version in the manifest")
    t.add_argument("--labels", help="class labels for a .npy, .csv or IDX data file: .npy, .csv, .txt or IDX")
    t.add_argument("--label-column", help="CSV column (name or index) holding class labels")
    t.add_argument("--classes", type=_ints, help="train on these classes only (the normal data), e.g. 0,1")
    t.add_argument(
        "--likelihood",
        choices=["bernoulli", "gaussian", "logistic"],
        help="default: bernoulli for images (grey levels in [0, 1]) and IDX files, gaussian for tables; logistic: "
        "a discretized logistic over whole raw levels (8-bit pixels), so log p(x) is the probability of the data",
    )
    t.add_argument(
        "--image",
        type=_ints,
        metavar="C,H,W",
        help="the rows are images of this layout (found by itself for (N, H, W) and (N, C, H, W) arrays, and "
        "for rows of 64 or 784 whole numbers)",
    )
    t.add_argument(
        "--value-range",
        type=_floats,
        metavar="LOW,HIGH",
        help="Bernoulli models: the raw values mapped to 0 and 1 (read off the data where that is safe: [0, 1], "
        "8-bit pixels 0-255, digits 0-16; otherwise training stops and asks for it)",
    )
    t.add_argument(
        "--split",
        type=_floats,
        metavar="VAL,CALIB,TEST",
        help="fractions of the rows held out (default: 10 %% each, calibration raised toward 300 rows within 30 %%)",
    )
    t.add_argument(
        "--folds",
        type=int,
        help="cross-fitted members: the normal rows are dealt into F folds, member f trains on the others and "
        "calibrates on fold f, so every row trains F-1 members and calibrates once (default: 5 below 1,000 "
        "normal rows, else 1; 1: one model with a held-out calibration split). With F > 1, --split VAL,CALIB,TEST "
        "is each member's validation share, rows that calibrate but train no member, and rows held out from all",
    )
    t.add_argument(
        "--background",
        action="store_true",
        help="also train the background model of the likelihood_ratio anomaly score (twice the training time)",
    )
    t.add_argument(
        "--background-noise", type=float, default=0.2, help="fraction of features the background sees as noise"
    )
    t.add_argument(
        "--model",
        choices=["mlp", "conv", "auto"],
        help="auto: train both (images) and keep the better validation ELBO (default: the preset's: conv for "
        "28x28 images, where it had the better validation ELBO and anomaly scores; mlp otherwise, several times "
        "faster on a CPU)",
    )
    t.add_argument("--hidden", type=_ints, help="MLP hidden widths, e.g. 200,200")
    t.add_argument("--channels", type=_ints, help="conv channels, one stride-2 layer each, e.g. 32,64")
    t.add_argument("--latent", type=int, help="latent dimension")
    t.add_argument("--activation", default="tanh", choices=["tanh", "relu", "elu", "gelu"])
    t.add_argument(
        "--epochs",
        type=int,
        help="passes over the training rows at most (default: the preset's; a training set of fewer than 8 batches "
        "gets the preset's epochs, warm-up and patience multiplied so that each covers as many updates, unless "
        "any of the three is given)",
    )
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    t.add_argument("--k", type=int, default=1, help="samples per input for --objective iwae")
    t.add_argument("--warmup", type=int, help="KL warm-up epochs")
    t.add_argument("--patience", type=int, help="early stopping patience in epochs")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--eval-k", type=int, default=5000, help="K of the test IWAE in the manifest")
    t.add_argument("--calib-k", type=int, default=1000, help="K of the anomaly calibration")
    t.add_argument("--no-progress", action="store_true")

    e = sub.add_parser("evaluate", help="test ELBO and IWAE log p(x) at several K, active units, PNG grids")
    e.add_argument("bundle", type=Path)
    e.add_argument("--data", help="data set (default: the one in the bundle's training summary)")
    e.add_argument("--ks", type=_ints, default=(1, 10, 100, 1000, 5000))
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--pictures", type=Path, help="directory for reconstructions.png and samples.png")

    c = sub.add_parser("calibrate", help="recalibrate a bundle's anomaly scores on new normal data, no retraining")
    c.add_argument("bundle", type=Path)
    c.add_argument(
        "data",
        nargs="?",
        help="normal data in raw units (file or data set; default: the bundle's own held-out calibration split, "
        "and its validation split for the combined score's standardization; with DATA and no standardization "
        "yet, 30 %% of DATA)",
    )
    c.add_argument("--k", type=int, help="K of the estimator (default: the bundle's current calibration K)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--classes", type=_ints, help="use only these classes of labelled data")
    c.add_argument("--labels", help="class labels for a .npy, .csv or IDX data file: .npy, .csv, .txt or IDX")
    c.add_argument(
        "--add",
        action="store_true",
        help="add DATA's scores to the calibration already there (same K and seed) instead of replacing it",
    )

    m = sub.add_parser("compare", help="test log p(x) of the VAE against probabilistic PCA and a Gaussian mixture")
    m.add_argument("bundle", type=Path)
    m.add_argument("--data", help="data set (default: the one in the bundle's training summary)")
    m.add_argument("--k", type=int, default=5000)
    return p


def _train(args: argparse.Namespace) -> None:
    if args.image is not None and len(args.image) != 3:
        raise ValueError(f"--image takes C,H,W, got {','.join(map(str, args.image))}")
    for flag, value in (("--value-range", args.value_range), ("--split", args.split)):
        if value is not None and len(value) != (2 if flag == "--value-range" else 3):
            raise ValueError(f"{flag} takes {'LOW,HIGH' if flag == '--value-range' else 'VAL,CALIB,TEST'}")
    data = load_dataset(
        args.data,
        likelihood=args.likelihood,
        labels=args.labels,
        label_column=args.label_column,
        image=args.image,
        value_range=args.value_range,
    )
    chosen = preset_for(data.preset, {f.name: getattr(args, f.name) for f in fields(Preset)})
    model = VAEConfig(
        input_shape=(), kind=chosen.model, latent_dim=chosen.latent, hidden=chosen.hidden, activation=args.activation
    )
    if args.channels:
        model.channels = args.channels
    train = TrainConfig(
        epochs=chosen.epochs,
        batch_size=chosen.batch_size,
        lr=args.lr,
        objective=args.objective,
        k=args.k,
        warmup_epochs=chosen.warmup,
        patience=chosen.patience,
        min_batches=0 if any(getattr(args, f) is not None for f in ("epochs", "warmup", "patience")) else MIN_BATCHES,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    out = args.out or Path("models") / Path(args.data).stem
    report = run(
        RunConfig(
            data=args.data,
            out=out,
            model=model,
            train=train,
            name=args.name,
            version=args.version,
            classes=list(args.classes) if args.classes else None,
            likelihood=args.likelihood,
            labels=args.labels,
            label_column=args.label_column,
            eval_k=args.eval_k,
            calib_k=args.calib_k,
            split=args.split,
            background=args.background,
            background_noise=args.background_noise,
            dataset=data,
            folds=args.folds,
        )
    )
    m, summary = report.bundle.manifest, report.bundle.manifest.training
    assert summary is not None
    rows = [
        ("bundle", str(report.bundle.path)),
        (
            "model",
            f"{m.name}:{m.version}, {model.kind} {model.hidden if model.kind == 'mlp' else model.channels}, "
            f"latent {m.latent_dim}, {m.likelihood}",
        ),
        *_run_rows(report, summary),
        ("test ELBO", f"{report.test_elbo.elbo:.3f} ± {report.test_elbo.elbo_se:.3f} nats"),
        (f"test IWAE log p(x), K={report.test.k}", f"{report.test.log_px:.3f} ± {report.test.log_px_se:.3f} nats"),
        ("active units", f"{report.active_units} of {m.latent_dim}"),
        ("onnxruntime vs torch", f"max |diff| {report.parity:.1e}"),
        (
            "calibration",
            f"K={report.calibration.k}, {report.calibration.n} inputs, scores {', '.join(report.calibration.scores)}; "
            f"smallest alpha {report.calibration.min_alpha:.3g}",
        ),
        ("total time", f"{report.seconds:.1f} s"),
    ]
    rows += [(f"choice: {name}", why) for name, why in summary.choices.items()]
    rows += [("warning", warning) for warning in summary.warnings]
    print(format_table(["", ""], rows, title="vaeserve-train summary"))


def _run_rows(report: RunReport, summary: TrainingSummary) -> list[tuple[str, str]]:
    m, h = report.bundle.manifest, report.history
    if m.cross_fit is None:
        return [
            ("epochs", f"{h.epochs} (best {h.best_epoch}), {h.duration_s:.1f} s training"),
            (
                "train / val / calib / test",
                f"{summary.n_train} / {summary.n_val} / {report.calibration.n} / {summary.n_test}",
            ),
        ]
    cf = m.cross_fit
    return [
        ("members", f"{cf.folds}, {summary.duration_s:.1f} s training in all, {summary.epochs} epochs at most"),
        ("rows per member", f"train {' / '.join(map(str, cf.n_train))}; validation {' / '.join(map(str, cf.n_val))}"),
        ("calib / test", f"{report.calibration.n} (every training row, once) / {summary.n_test}"),
    ]


def _evaluate(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    splits = bundle_splits(bundle, args.data)
    if not len(splits.test):
        raise ValueError(
            f"{bundle.path}: the ensemble held out no test rows (every row trained members and calibrated one; its "
            "summary's figures are out of fold); train with --split VAL,CALIB,TEST to hold some out"
        )
    engine = cpu_engine(bundle)
    rows = [
        (r.k, r.log_px, r.log_px_se, r.elbo, r.elbo_se, r.mc_se, r.ess)
        for r in evaluate(engine, splits.test, list(args.ks), args.seed)
    ]
    dim = bundle.manifest.dim
    print(
        format_table(
            ["K", "IWAE log p(x)", "± se", "ELBO", "± se", "mean MC se", "mean ESS"],
            rows,
            title=f"{bundle.manifest.name}: {len(splits.test)} test inputs, nats per input "
            f"(D = {dim}; se over the test set)",
        )
    )
    print(f"active units: {active_units(engine, splits.test)} of {bundle.manifest.latent_dim}")
    if args.pictures:
        for path in save_pictures(engine, splits.test, args.pictures, seed=args.seed):
            print(f"wrote {path}")


def _compare(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    rows = compare(bundle, bundle_splits(bundle, args.data), k=args.k)
    print(
        format_table(
            ["model", "test log p(x)", "± se", "notes"],
            rows,
            title=f"{bundle.manifest.name}: test log-likelihood, nats per input, same standardised data",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "evaluate": _evaluate, "calibrate": recalibrate, "compare": _compare}[args.command](args)
    except (DataFileError, BundleError, ExportError, ValueError, FloatingPointError) as exc:
        print(f"vaeserve-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
