"""Ensembles: the average of the probabilities of several models (``model.ensemble``).

``model.ensemble: [cnn, cnn, features]`` trains three members on the same images into
``RUN/members/1-cnn``, ``2-cnn``, ``3-features`` (each a complete run folder, trained by
``wbc train``'s own code), member i with seed ``seed + i``: the same family twice is two seeds,
different families are a family average. ``ensemble.json`` lists the members' model files.

Members are the models of their final epoch (``last.keras``; a features model has only one),
never the epoch with the lowest validation loss: ``wbc train`` validates on the test side, so
choosing there would score the ensemble on data it was picked with.

Inputs are fed at the largest member's input size; a member with a smaller one gets them
resized (``resize_batch``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wbc.core.errors import ModelError
from wbc.models.base import Classifier, Engine, Family, FitJob, FitResult, resize_batch
from wbc.models.registry import family_for, register_family

ENSEMBLE_FILE = "ensemble.json"


def member_configs(config) -> list[tuple[str, Any]]:
    """``(folder name, config)`` of each member: its family, seed + i, no ensemble."""
    members = []
    for index, family in enumerate(config.model.ensemble):
        model = dataclasses.replace(config.model, family=family, ensemble=(), tta=False)
        members.append(
            (
                f"{index + 1}-{family}",
                dataclasses.replace(config, seed=config.seed + index, model=model),
            )
        )
    return members


class EnsembleEngine(Engine):
    def __init__(self, parts: Sequence[tuple[Engine, tuple[int, int]]]):
        self.parts = list(parts)
        engines = sorted({engine.engine for engine, _ in self.parts})
        self.engine = "+".join(engines)
        reasons = [engine.fallback for engine, _ in self.parts if engine.fallback]
        self.fallback = reasons[0] if reasons else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        total = None
        for engine, size in self.parts:
            probs = np.asarray(engine(resize_batch(batch, size)), np.float64)
            total = probs if total is None else total + probs
        return total / len(self.parts)


class EnsembleClassifier(Classifier):
    def __init__(self, members: Sequence[Classifier], path: Path, files: Sequence[Path] = ()):
        self.members = list(members)
        self.path = Path(path)
        self.files = [Path(file) for file in files]  # each member's model file, as loaded
        self.n_classes = self.members[0].n_classes
        self.image_size = max(
            (m.image_size for m in self.members), key=lambda size: size[0] * size[1]
        )

    def engine(self, name: str = "auto", cache: bool = True, tta: bool = False) -> Engine:
        return EnsembleEngine([(m.engine(name, cache, tta), m.image_size) for m in self.members])

    def adapt_to(self, pixels: np.ndarray, echo=print, balanced: bool = True) -> list[dict]:
        """Each member adapted on the cells at its own input size, as its family adapts (AdaBN,
        the features scaler); each part names its member (1-based)."""
        parts = []
        for index, member in enumerate(self.members, 1):
            echo(f"ensemble member {index}/{len(self.members)}")
            cells = resize_batch(np.asarray(pixels, np.uint8), member.image_size)
            adapted = member.adapt_to(cells, echo, balanced)
            parts.extend({"member": index, **part} for part in adapted)
        return parts

    def save(self, path: Path) -> None:
        """The ensemble file at ``path``, each member laid out beside it as in the run it was
        loaded from: the member's run-definition files, then its (adapted) model."""
        from wbc.core.manifest import write_atomic
        from wbc.models.runs import RUN_DEFINITION_FILES

        if len(self.files) != len(self.members):
            raise ModelError(f"{self.path}: the members' files are not known; load it again")
        path, root = Path(path), self.path.parent.resolve()
        for member, file in zip(self.members, self.files):
            source = file.resolve()
            target = path.parent / source.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            for name in RUN_DEFINITION_FILES:
                if (source.parent / name).is_file():
                    write_atomic(target.parent / name, (source.parent / name).read_bytes())
            member.save(target)
        write_atomic(path, self.path.read_bytes())

    def explain(self, pixels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        """The first member's explanation, with the ensemble's probabilities."""
        first = self.members[0].explain(
            resize_batch(np.asarray(pixels)[None], self.members[0].image_size)[0], classes
        )
        first["probabilities"] = self.engine("auto", cache=False)(np.asarray(pixels)[None])[0]
        first["method"] = f"{first.get('method', '')} of member 1 of {len(self.members)}"
        return first


@register_family
class EnsembleFamily(Family):
    name = "ensemble"
    description = "the mean of the probabilities of several member models"
    model_file = ENSEMBLE_FILE

    def __init__(self, config):
        super().__init__(config)
        self.members = [(folder, family_for(cfg), cfg) for folder, cfg in member_configs(config)]

    def input_size(self) -> tuple[int, int]:
        return max(
            (family.input_size() for _, family, _ in self.members),
            key=lambda size: size[0] * size[1],
        )

    def fit(self, job: FitJob) -> FitResult:
        entries, n_train = [], 0
        if job.init_model is not None:
            job.echo(
                f"warning: --init {job.init_model} is not used by an ensemble: its members "
                "train from scratch (adapt each member's run instead)"
            )
        for index, (folder, family, member_config) in enumerate(self.members):
            member_dir = Path(job.run_dir) / "members" / folder
            job.echo(
                f"ensemble member {index + 1}/{len(self.members)}: {family.name} "
                f"(seed {member_config.seed}) -> {member_dir}"
            )
            resume = member_dir if job.resuming and (member_dir / "config.yaml").is_file() else None
            if not (member_dir / "metrics.json").is_file():
                if job.train_run is None:
                    raise ValueError("an ensemble needs FitJob.train_run to train its members")
                job.train_run(
                    member_config,
                    run_dir=member_dir,
                    resume_dir=resume,
                    init_model=None,
                    echo=job.echo,
                    folders=(job.train_dir, job.test_dir),
                    strategy=job.strategy,
                )
            metrics = json.loads((member_dir / "metrics.json").read_text(encoding="utf-8"))
            final = metrics.get("last_model") or metrics["evaluated_model"]
            entries.append(
                {
                    "family": family.name,
                    "seed": member_config.seed,
                    "model": f"members/{folder}/{final}",
                }
            )
            n_train = max(n_train, int(metrics.get("train_images", 0)))
        from wbc.core import runfolder
        from wbc.core.manifest import write_json

        classes = runfolder.read_classes(
            Path(job.run_dir) / "members" / self.members[0][0] / "classes.json"
        )
        runfolder.write_classes(classes, Path(job.run_dir) / "classes.json")
        write_json(Path(job.run_dir) / ENSEMBLE_FILE, {"members": entries})
        return FitResult(
            classes=list(classes),
            model_file=ENSEMBLE_FILE,
            n_train=n_train,
            facts={"members": entries},
            done=f"ensemble of {len(entries)} (" + ", ".join(e["family"] for e in entries) + ")",
        )

    @staticmethod
    def member_files(path: Path) -> list[Path]:
        path = Path(path)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))["members"]
            files = [path.parent / entry["model"] for entry in entries]
        except FileNotFoundError:
            raise ModelError(f"{path}: model file not found") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise ModelError(
                f"{path}: not a valid ensemble file (expected "
                '{"members": [{"model": ...}, ...]})'
            ) from None
        if not files:
            raise ModelError(f"{path}: the ensemble has no members")
        return files

    @staticmethod
    def check_file(path: Path) -> None:
        EnsembleFamily.member_files(path)

    def load(self, path: Path, classes: Sequence[str]) -> Classifier:
        from wbc.models.runs import load_run

        path = Path(path)
        files = self.member_files(path)
        root = path.parent.resolve()
        members = []
        for file in files:
            if root not in file.resolve().parents:
                raise ModelError(f"{path}: member {file} lies outside the run folder")
            member = load_run(file)
            if list(member.classes) != list(classes):
                raise ModelError(
                    f"{file}: classes {list(member.classes)} differ from the "
                    f"ensemble's {list(classes)}"
                )
            members.append(member.model)
        return EnsembleClassifier(members, path, files)
