"""wbc cv: grouped stratified folds of source images, fold folders without leaks, cv.json, resume,
--per-class, --data/--init, and augment.per_class_targets.

One 2-fold cross-validation (1 epoch, 40x48 images) is shared by the tests that inspect its
output: fold 1 really trains and is evaluated, fold 2 uses a stub that writes a metrics.json (a
second real fold would only repeat the first and cost ~15 s of TensorFlow tracing on a loaded
2-core machine). The other tests stub training too, so the file stays well under a minute.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.core.errors import ConfigError, DataError
from wbc.data.stages.augment import augment, augment_params
from wbc.data.stages.naming import parse_name
from wbc.data.stages.rename import rename
from wbc.workflows.cv import cross_validate
from wbc.workflows.folds import FoldSource, cap_files, deal_folds

from conftest import CLASSES, STUDY_CONFIG, make_class_folders, make_raw_folder

COUNTS = {"NEUTROPHIL": 8, "EOSINOPHIL": 6, "LYMPHOCYTE": 5, "MONOCYTE": 4}
SETTINGS = [
    "rename.find_duplicates=false",
    "augment.per_class=12",
    "augment.engine=opencv",
    "augment.workers=1",
    "train.image_size=[40,48]",
    "train.patience=null",
    "train.batch_size=8",
]
GROUP = (0, 1, 2)  # three neutrophil ids declared one same-field group in groups.csv


def _config(*extra: str):
    return load_config(STUDY_CONFIG, [*SETTINGS, *extra])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A prepared data dir: renamed (with a hand-made group) and augmented (12 per class)."""
    root = tmp_path_factory.mktemp("cvdata")
    raw = make_raw_folder(root / "raw", COUNTS)
    data = root / "data"
    config = _config()
    rename(raw, data / "interim" / "renamed", config)
    groups = data / "interim" / "renamed" / "groups.csv"
    groups.write_text("id,group\n" + "".join(f"{i},{GROUP[0]}\n" for i in GROUP))
    augment(data / "interim" / "renamed", data / "interim" / "augmented", config)
    return data


@pytest.fixture(scope="module")
def cv_run(data_dir, tmp_path_factory):
    import wbc.workflows.train

    out = tmp_path_factory.mktemp("cv") / "out"
    lines: list[str] = []
    real, stub = wbc.workflows.train.train, _stub_train([])

    def first_fold_real(config, **kwargs):
        return (real if Path(kwargs["run_dir"]).name == "fold-1" else stub)(config, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("wbc.workflows.train.train", first_fold_real)
        report = cross_validate(
            _config(),
            data_dir=data_dir,
            folds=2,
            epochs=1,
            out=out,
            echo=lines.append,
            train_echo=lines.append,
        )
    return out, report, lines


def _stub_train(calls: list):
    """Stands in for wbc.workflows.train.train: records the call, writes a run's metrics.json."""

    def fake(
        config,
        data_dir=None,
        run_dir=None,
        resume_dir=None,
        init_model=None,
        echo=print,
        folders=None,
        **kwargs,
    ):
        calls.append(
            {
                "run_dir": Path(run_dir),
                "resume_dir": resume_dir,
                "folders": folders,
                "init_model": init_model,
                "config": config,
            }
        )
        train_dir, test_dir = map(Path, folders)
        classes = sorted(p.name for p in train_dir.iterdir())
        support = [
            len(list((test_dir / c).glob("*"))) if (test_dir / c).is_dir() else 0 for c in classes
        ]
        matrix = np.diag(support).tolist()  # every test image right
        metrics = {
            "accuracy": 1.0,
            "macro_f1": 1.0,
            "classes": classes,
            "per_class": {
                c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": n}
                for c, n in zip(classes, support)
            },
            "confusion_matrix": matrix,
            "n_images": sum(support),
            "train_images": sum(len(list((train_dir / c).iterdir())) for c in classes),
            "best_epoch": 0,
            "epochs_run": 1,
            "wall_seconds": 0.1,
        }
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "metrics.json").write_text(json.dumps(metrics))
        return Path(run_dir)

    return fake


def _side_ids(folder: Path) -> dict[str, set[int]]:
    return {
        c.name: {parse_name(f.name).source_id for f in c.iterdir()}
        for c in folder.iterdir()
        if c.is_dir()
    }


# --------------------------------------------------------------------------- folds (pure)


def test_folds_are_disjoint_stratified_complete_and_keep_groups_together():
    units = {
        "A": [[i] for i in range(23)] + [[100, 101, 102]],
        "B": [[i] for i in range(200, 207)],
        "C": [[300], [301]],
    }
    folds = deal_folds(units, 5, seed=3)
    assert len(folds) == 5
    for cls, class_units in units.items():
        members = [m for f in folds for m in f[cls]]
        assert sorted(members) == sorted(m for u in class_units for m in u)  # complete, disjoint
        for unit in class_units:  # a group never straddles folds
            assert sum(1 for f in folds if set(unit) & set(f[cls])) == 1
    # singletons: each fold holds n // k or n // k + 1 of the class
    assert sorted(len(f["B"]) for f in folds) == [1, 1, 1, 2, 2]
    assert sorted(len(f["C"]) for f in folds) == [0, 0, 0, 1, 1]
    sizes = [len(f["A"]) for f in folds]
    assert max(sizes) - min(sizes) <= 3  # the group of 3 may tip one fold
    totals = [sum(len(v) for v in f.values()) for f in folds]
    assert max(totals) - min(totals) <= 3
    assert deal_folds(units, 5, seed=3) == folds  # seeded
    assert deal_folds(units, 5, seed=4) != folds
    with pytest.raises(ConfigError, match="at least 2 folds"):
        deal_folds(units, 1, seed=3)


def test_cap_keeps_originals_first_and_spreads_copies_evenly(tmp_path):
    files = {
        i: [tmp_path / f"A.{i}.jpg"] + [tmp_path / f"A.{i}.a{c:04d}.jpg" for c in range(i, 40, 4)]
        for i in range(4)
    }
    every = [p for v in files.values() for p in v]
    assert cap_files(files, None, 1, "f") == sorted(every, key=lambda p: p.name)
    capped = cap_files(files, 10, 1, "f")
    assert len(capped) == 10
    names = [parse_name(p.name) for p in capped]
    assert sum(n.copy is None for n in names) == 4  # every original before any copy
    per_source = Counter(n.source_id for n in names)
    assert max(per_source.values()) - min(per_source.values()) <= 1
    assert cap_files(files, 10, 1, "f") == capped
    draws = {tuple(cap_files(files, 3, seed, "f")) for seed in range(8)}
    assert len(draws) > 1  # which originals a tight cap keeps is a seeded draw
    assert all(parse_name(p.name).copy is None for p in cap_files(files, 3, 1, "f"))


# --------------------------------------------------------------------------- one real CV


@pytest.mark.slow  # the shared fixture trains one real fold
def test_fold_folders_have_no_leak_and_test_originals_only(cv_run, data_dir):
    out, report, _ = cv_run
    sources = {
        c: {parse_name(p.name).source_id for p in (data_dir / "interim/renamed").glob(f"{c}.*.jpg")}
        for c in CLASSES
    }
    tested: dict[str, list[int]] = {c: [] for c in CLASSES}
    for fold in (1, 2):
        folder = out / "data" / f"fold-{fold}"
        train_ids, test_ids = _side_ids(folder / "train"), _side_ids(folder / "test")
        for cls in CLASSES:
            assert not train_ids[cls] & test_ids.get(cls, set())  # no copy of a test cell
            assert train_ids[cls] | test_ids.get(cls, set()) == sources[cls]
            tested[cls] += sorted(test_ids.get(cls, set()))
        for path in (folder / "test").rglob("*.jpg"):
            assert parse_name(path.name).copy is None  # originals only
        copies = [p for p in (folder / "train").rglob("*.jpg") if parse_name(p.name).copy]
        assert copies  # training uses the augmented copies
        group_side = {("test" if i in test_ids["NEUTROPHIL"] else "train") for i in GROUP}
        assert len(group_side) == 1  # the same-field group stays together
    for cls in CLASSES:  # the test folds partition the sources, about half each
        assert sorted(tested[cls]) == sorted(sources[cls])
    folds = json.loads((out / "folds.json").read_text())["folds"]
    for cls in COUNTS:
        sizes = sorted(len(f["test"][cls]) for f in folds)
        assert sizes[1] - sizes[0] <= (len(GROUP) if cls == "NEUTROPHIL" else 1)


@pytest.mark.slow  # the shared fixture trains one real fold
def test_cv_json_schema_and_mean_std_from_the_folds(cv_run):
    out, report, lines = cv_run
    saved = json.loads((out / "cv.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["k"] == 2 and saved["complete"] is True and saved["score"] == "last"
    assert saved["classes"] == sorted(CLASSES)
    assert saved["config"]["train"]["epochs"] == 1
    assert saved["config"]["train"]["image_size"] == [40, 48]
    assert len(saved["folds"]) == 2
    for fold in saved["folds"]:
        run = Path(fold["run"])
        assert (run / "metrics-last.json").is_file()
        metrics = json.loads((run / "metrics.json").read_text())
        test_files = list((out / "data" / run.name / "test").rglob("*.jpg"))
        assert fold["n_test"] == len(test_files) == metrics["n_images"]
        assert fold["best"]["accuracy"] == metrics["accuracy"]
        assert fold["best"]["macro_f1"] == metrics["macro_f1"]
        assert fold["accuracy"] == fold["last"]["accuracy"]
        assert set(fold["per_class_f1"]) <= set(CLASSES)
        assert {"n_train", "epochs_run", "val_acc_final", "val_loss_min"} <= set(fold)
    for which in ("best", "last"):
        part = saved["summary"][which]
        for key in ("accuracy", "macro_f1"):
            values = [f[which][key] for f in saved["folds"]]
            assert part["mean"][key] == pytest.approx(np.mean(values))
            assert part["std"][key] == pytest.approx(np.std(values, ddof=1))
        assert part["pooled"]["n_test"] == sum(f["n_test"] for f in saved["folds"])
    assert saved["mean"] == saved["summary"]["last"]["mean"]
    markdown = (out / "cv.md").read_text()
    assert "| **mean** |" in markdown and "| **std** |" in markdown and "```yaml" in markdown
    assert any(line.startswith("fold 2/2: last model accuracy") for line in lines)
    real = out / "fold-1"  # the fold that really trained: a complete wbc train run folder
    for name in ("model.keras", "last.keras", "history.csv", "config.yaml", "classes.json"):
        assert (real / name).is_file(), name
    assert json.loads((real / "classes.json").read_text()) == sorted(CLASSES)
    assert saved["folds"][0]["epochs_run"] == 1 and saved["folds"][0]["val_loss_min"] > 0
    from wbc.workflows.tune import _single_row  # how `wbc tune` reads a real run folder

    row = _single_row(real)
    assert row["epochs"] == 1 and row["seconds"] > 0 and row["collapsed"] in (True, False)
    assert 0 <= row["val_acc_final"] <= 1 and row["val_acc_best"] == row["val_acc_final"]
    assert row["val_loss_min"] > 0 and 0 <= row["test_macro_f1"] <= 1


@pytest.mark.slow  # the shared fixture trains one real fold
@pytest.mark.slow  # the shared fixture trains one real fold
def test_cv_folder_gets_a_model_card_with_the_cv_numbers(cv_run):
    out, report, _ = cv_run
    card = (out / "MODEL_CARD.md").read_text()
    mean, std = report["mean"], report["std"]
    assert (f"accuracy **{mean['accuracy']:.3f} +/- {std['accuracy']:.3f}**") in card
    assert "2 folds x 1 repeat(s)" in card and "not a diagnostic device" in card


def test_rerun_skips_finished_folds_and_resumes_a_partial_one(cv_run, data_dir, monkeypatch):
    out, report, _ = cv_run
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    again = cross_validate(
        _config(), data_dir=data_dir, folds=2, epochs=1, out=out, echo=lambda _: None
    )
    assert calls == []  # both folds had metrics.json: nothing trained
    assert again["summary"] == report["summary"]
    # A fold killed during training (history and checkpoints, no metrics.json) is resumed.
    saved = (out / "fold-1" / "metrics.json").read_bytes()
    (out / "fold-1" / "metrics.json").unlink()
    try:
        cross_validate(
            _config(), data_dir=data_dir, folds=2, epochs=1, out=out, echo=lambda _: None
        )
    finally:
        (out / "fold-1" / "metrics.json").write_bytes(saved)
    assert [c["run_dir"].name for c in calls] == ["fold-1"]
    assert calls[0]["resume_dir"] == out / "fold-1"
    assert calls[0]["folders"] == (out / "data/fold-1/train", out / "data/fold-1/test")


@pytest.mark.slow  # the shared fixture trains one real fold
def test_other_settings_in_the_same_out_are_refused(cv_run, data_dir):
    out, _, _ = cv_run
    with pytest.raises(DataError, match=r"other settings \(config: train.epochs 1 -> 2\)"):
        cross_validate(_config(), data_dir=data_dir, folds=2, epochs=2, out=out, echo=print)
    with pytest.raises(DataError, match="--folds"):
        cross_validate(_config(), data_dir=data_dir, folds=3, epochs=1, out=out, echo=print)


@pytest.mark.slow  # the shared fixture trains one real fold
def test_cli_prints_the_table_of_a_finished_cv(cv_run, data_dir):
    out, report, _ = cv_run
    args = [
        "cv",
        "--config",
        str(STUDY_CONFIG),
        "--data-dir",
        str(data_dir),
        "--folds",
        "2",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    for item in SETTINGS:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "done before, skipped" in result.output and "Epoch" not in result.output
    assert "macro-F1" in result.output and "mean" in result.output and "pooled" in result.output
    assert f"macro-F1 {report['mean']['macro_f1']:.4f} +/- " in result.output
    result = CliRunner().invoke(cli, ["cv", "--help"])
    assert result.exit_code == 0 and "Example: wbc cv" in result.output


# --------------------------------------------------------------------------- stubbed training


def test_per_class_caps_training_images_per_fold(data_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    report = cross_validate(
        _config(),
        data_dir=data_dir,
        folds=2,
        epochs=1,
        per_class=5,
        out=tmp_path / "cv",
        echo=lambda _: None,
    )
    assert len(calls) == 2
    for call in calls:
        train_dir = call["folders"][0]
        for cls in CLASSES:
            files = list((train_dir / cls).iterdir())
            assert len(files) == 5
    assert report["per_class"] == 5 and report["folds"][0]["n_train"] == 20


def test_per_class_targets_make_their_own_augmented_set(data_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    config = _config("augment.per_class_targets={MONOCYTE: 20}")
    lines: list[str] = []
    cross_validate(
        config, data_dir=data_dir, folds=2, epochs=1, out=tmp_path / "cv", echo=lines.append
    )
    built = list((tmp_path / "cv").glob("augmented-*"))
    assert len(built) == 1 and any("does not match the augment settings" in x for x in lines)
    assert len(list((built[0] / "MONOCYTE").iterdir())) == 20
    assert len(list((built[0] / "NEUTROPHIL").iterdir())) == 12
    trained = sum(len(list((c["folders"][0] / "MONOCYTE").iterdir())) for c in calls)
    assert trained == 20  # each source's 5 images train in the one fold that does not test it
    # the prepared folder (made without targets) was left alone
    assert len(list((data_dir / "interim/augmented/MONOCYTE").iterdir())) == 12


def test_data_folder_mode_folds_files_and_passes_init(tmp_path, monkeypatch):
    folder = make_class_folders(tmp_path / "lab", {"NEUTROPHIL": 6, "MONOCYTE": 3})
    (tmp_path / "lab/MONOCYTE/MONOCYTE.8.a0001.jpg").write_bytes(
        (tmp_path / "lab/MONOCYTE/MONOCYTE.8.jpg").read_bytes()
    )  # a copy: same fold as its source
    init = tmp_path / "init.keras"
    init.write_bytes(b"stub")
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    report = cross_validate(
        _config(),
        folds=3,
        epochs=1,
        data=folder,
        init_model=init,
        out=tmp_path / "cv",
        echo=lambda _: None,
    )
    assert report["mode"] == "folder" and len(calls) == 3
    assert all(c["init_model"] == init for c in calls)
    seen: list[str] = []
    for call in calls:
        train_dir, test_dir = call["folders"]
        test = {p.name for p in test_dir.rglob("*.jpg")}
        train = {p.name for p in train_dir.rglob("*.jpg")}
        assert not test & train and len(test | train) == 10
        assert len(list((test_dir / "NEUTROPHIL").iterdir())) == 2  # stratified over files
        assert ("MONOCYTE.8.jpg" in test) == ("MONOCYTE.8.a0001.jpg" in test)
        seen += sorted(test)
    assert len(seen) == len(set(seen)) == 10
    with pytest.raises(DataError, match="model file not found"):
        cross_validate(
            _config(),
            folds=3,
            data=folder,
            init_model=tmp_path / "nope.keras",
            out=tmp_path / "cv2",
            echo=lambda _: None,
        )


def test_a_class_with_one_source_is_a_clear_error(tmp_path):
    folder = make_class_folders(tmp_path / "lab", {"NEUTROPHIL": 4, "MONOCYTE": 1})
    with pytest.raises(DataError, match="MONOCYTE has 1 source group"):
        cross_validate(_config(), folds=2, data=folder, out=tmp_path / "cv", echo=print)


def test_missing_prepared_data_names_the_stage(tmp_path):
    with pytest.raises(DataError, match="run `wbc prepare --stage rename`"):
        cross_validate(_config(), data_dir=tmp_path, folds=2, out=tmp_path / "cv", echo=print)
    with pytest.raises(DataError, match="run `wbc prepare --stage crop`"):
        cross_validate(
            _config("crop.mode=boxes"), data_dir=tmp_path, folds=2, out=tmp_path / "cv", echo=print
        )


# --------------------------------------------------------------------------- per_class_targets


def test_augment_honours_per_class_targets(data_dir, tmp_path):
    config = _config("augment.per_class_targets={MONOCYTE: 9, NEUTROPHIL: 3}")
    manifest = augment(data_dir / "interim" / "renamed", tmp_path / "aug", config)
    counts = manifest.summary["counts"]
    assert counts["MONOCYTE"] == {"originals": 4, "copies": 5, "total": 9}
    assert counts["EOSINOPHIL"]["total"] == 12  # per_class for the classes not named
    assert counts["NEUTROPHIL"] == {"originals": 8, "copies": 0, "total": 8}
    assert manifest.summary["over_per_class"] == {"NEUTROPHIL": 8}
    assert manifest.params["per_class_targets"] == {"MONOCYTE": 9, "NEUTROPHIL": 3}
    # Without targets the parameters (and so earlier manifests) are as before the key existed.
    assert "per_class_targets" not in augment_params(_config())


def test_per_class_targets_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'MONOCYTE'"):
        load_config(
            STUDY_CONFIG,
            ["rename.classes=[NEUTROPHIL, MONOCYTE]", "augment.per_class_targets={MONOCYTES: 3}"],
        )
    with pytest.raises(ConfigError, match="at least 1"):
        load_config(STUDY_CONFIG, ["augment.per_class_targets.MONOCYTE=0"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(STUDY_CONFIG, ["augment.per_class_targets=5"])
    with pytest.raises(ConfigError, match="per_class_targets.MONOCYTE: expected an integer"):
        load_config(STUDY_CONFIG, ["augment.per_class_targets={MONOCYTE: many}"])
    config = load_config(STUDY_CONFIG, ["augment.per_class_targets.MONOCYTE=900"])
    assert config.augment.per_class_targets == {"MONOCYTE": 900}
    assert hash(config.augment)  # frozen configs stay hashable (the augment engine cache)
    with pytest.raises(TypeError):
        config.augment.per_class_targets["MONOCYTE"] = 1


def test_fold_source_units_bundle_groups():
    source = FoldSource(
        "prepared", "x", "id", {}, {"A": {1: [], 2: [], 3: [], 4: []}}, groups={2: 1, 1: 1}
    )
    assert source.units() == {"A": [[1, 2], [3], [4]]}


def test_repeats_deal_the_folds_again_with_other_seeds(data_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    out = tmp_path / "cv"
    report = cross_validate(
        _config(),
        data_dir=data_dir,
        folds=2,
        epochs=1,
        per_class=5,
        out=out,
        echo=lambda _: None,
        repeats=3,
    )
    assert [Path(c["run_dir"]).name for c in calls] == [
        f"fold-{r}.{j}" for r in (1, 2, 3) for j in (1, 2)
    ]
    assert report["complete"] and report["repeats"] == 3 and len(report["folds"]) == 6
    dealt = json.loads((out / "folds.json").read_text())["folds"]
    tests = [json.dumps(f["test"], sort_keys=True) for f in dealt]
    assert len(set(tests)) > 2  # the repeats test other sources than repeat 1
    for r in (1, 2, 3):  # each repeat still tests every source exactly once
        members = [m for f in dealt if f["repeat"] == r for ms in f["test"].values() for m in ms]
        assert len(members) == len(set(members)) == sum(COUNTS.values())
    # repeat 1 is the single CV's dealing
    single = cross_validate(
        _config(),
        data_dir=data_dir,
        folds=2,
        epochs=1,
        per_class=5,
        out=tmp_path / "single",
        echo=lambda _: None,
    )
    assert [f["test_counts"] for f in single["folds"]] == [
        f["test_counts"] for f in report["folds"][:2]
    ]
    with pytest.raises(DataError, match="--repeats"):  # another plan in the same folder
        cross_validate(
            _config(),
            data_dir=data_dir,
            folds=2,
            epochs=1,
            per_class=5,
            out=out,
            echo=lambda _: None,
            repeats=2,
        )


def test_data_of_a_lab_is_read_as_prepare_reads_it_smears_cropped_crops_whole(
    tmp_path, monkeypatch
):
    lab = tmp_path / "lab"
    make_class_folders(lab, {"NEUTROPHIL": 4, "MONOCYTE": 4}, size=(48, 64), seed=4)  # smears
    make_class_folders(tmp_path / "crops", {"MONOCYTE": 2}, size=(40, 40), seed=6)  # square
    for path in (tmp_path / "crops" / "MONOCYTE").iterdir():
        path.rename(lab / "MONOCYTE" / f"crop-{path.name}")
    for cls in ("NEUTROPHIL", "MONOCYTE"):  # lab file names, not wbc's
        for path in (lab / cls).iterdir():
            path.rename(path.with_name(path.name.replace(".", "_", 1)))
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    report = cross_validate(
        _config("crop.mode=detect", "crop.size=32"),
        folds=2,
        epochs=1,
        data=lab,
        out=tmp_path / "cv",
        echo=lambda _: None,
    )
    assert report["mode"] == "folder" and len(calls) == 2
    crops = json.loads((tmp_path / "cv/lab-data/cropped/manifest.json").read_text())
    # the square crops are not searched as smears: kept whole, or re-cut when loosely framed
    assert crops["summary"]["kept_whole"] + crops["summary"]["reframed"] == 2
    assert crops["summary"]["images"] == 10
    for call in calls:
        for path in call["folders"][0].rglob("*.jpg"):
            assert Image.open(path).size == (32, 32)  # cut by the crop stage, not as is
