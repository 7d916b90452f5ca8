"""Kill-anywhere crash harness: SIGKILL wbc commands at many instants, rerun them, check the result.

A run killed at any instant must resume: rerunning the same command (``wbc train --resume RUN``
for a training) has to finish with the outputs an uninterrupted run makes, and leave no
temporary files behind. In the spirit of SQLite's crash tests, this script kills each command
many times, at instants biased towards the moments that matter (the writes), and checks every
recovery.

Design
------
- **Tiny generated data.** A fake Kaggle ``dataset-master`` (labels.csv, JPEGImages/, VOC
  Annotations/) of a few synthetic smears is written into the work folder, and every command
  runs with settings that make models tiny and epochs few, so that writing files is a large
  share of each run's time.
- **References.** Each command first runs once uninterrupted, in a fresh copy of the state it
  starts from: its duration, its final outputs (digests), its files and its number of write
  events are the reference. Commands whose outputs are meant to be deterministic (the features
  family's train, cv and tune; the exports) run a second time, so that a file that differs
  between two clean runs is reported as such and not blamed on a kill.
- **Trials.** A trial starts the command in a fresh copy of its start state (an empty output
  folder; for an export, a copy of the reference training's run folder) in a new process group
  (``start_new_session``), SIGKILLs the group (``os.killpg``) at the drawn instant, then reruns
  the same command (a killed ``wbc train`` with ``wbc train --resume RUN``, once its run folder
  exists) up to 3 times until it exits 0; a rerun that fails is a failure. Then it checks: every
  epoch once in each ``history.csv``; the deterministic outputs equal to the reference's (zip
  archives by member content, since skops names members by ``id()``; JSON and CSV without
  timing keys; the trial's own path masked: every trial folder has a path of the same length
  so that binary files embedding it, such as ONNX metadata, still compare); the prepared
  stages' manifest digests equal to the reference's; every file the reference has present; no
  temporary files anywhere under the trial folder (hidden ``.*tmp*``/``.*old*`` names, ``.tmp``
  or ``.partial`` suffixes); the shared input data untouched.
- **Kill instants.** Trials alternate between two kinds. Uniform: an instant drawn uniformly
  over the reference's wall-clock duration (this hits TensorFlow start-up and computation in
  proportion to their time; one drawn after the command's real end kills nothing). Biased to
  writes: K drawn uniformly in 1..E, where E is the number of write events the reference made;
  the process making the K-th write event kills itself. When that process is a Ray worker the
  driver may survive and finish (Ray retries the task): reported as ``killed worker``. Every
  draw comes from ``numpy.random.default_rng([seed, command, trial])``, so a trial is the same
  with or without ``--only``.
- **Why sitecustomize.** Write events are counted without touching the product code: a
  ``sitecustomize.py`` in a folder prepended to ``PYTHONPATH`` is imported by every Python
  process the command starts (the CLI, multiprocessing workers, Ray's raylet-started workers),
  before any other code. It wraps ``builtins.open``/``io.open`` (so ``pathlib``, ``os.fdopen``,
  ``zipfile`` (Keras' ``.keras``), PIL and numpy are covered) and counts opening a file for
  writing, each ``write`` call and the ``close``; plus ``os.replace``, ``os.rename``,
  ``os.fsync``, ``os.unlink``/``os.remove``, ``os.rmdir``, ``os.mkdir``, ``os.link``,
  ``os.symlink`` and ``shutil.copyfile``. Only events on paths under the trial's folder count
  (Ray's and TensorFlow's own logs do not). All processes append fixed-size records to one
  ``O_APPEND`` log, so the record's offset is a global event number across processes. When it
  equals ``WBC_KILL_AT_EVENT`` the process SIGKILLs itself: before a rename, fsync, unlink,
  mkdir or close (losing what was still buffered); after writing half the bytes of a ``write``
  call or half of a ``copyfile``. File writes done in C (h5py on a path, TensorFlow's own file
  system, OpenCV's imwrite) are not seen; they still get hit by the uniform instants.
- **Ray.** ``--executor ray`` starts a local Ray instance whose GCS, raylet and workers outlive
  a killed driver (they are not all in its process group). Every process a run starts carries
  ``WBC_KILL_MARK=<id>`` in its environment, which Ray's processes inherit; after every run the
  harness SIGKILLs each process whose ``/proc/PID/environ`` holds that mark (reported as stray
  processes). It never runs ``ray stop``, which would stop other people's Ray instances too.
- **Budget.** The kills are spread over the commands in proportion to 1/sqrt(seconds per
  trial) and run round robin; no trial starts after ``--minutes`` (default 60). On 2 cores the
  references take 6 to 8 minutes and a trial 3 s (prepare) to 2 min (cv on Ray): the default
  of 80 kills takes 45 to 60 minutes, depending on the load.

Usage: ``python scripts/kill_anywhere.py [--kills 80] [--seed 0] [--only CMD[,CMD]]
[--workdir DIR] [--json PATH] [--minutes 60] [--keep]``, or ``make crashtest ARGS='--kills
12'``. The commands: prepare, train-features, train-study, train-cnn, cv-local, cv-ray, tune,
export-onnx, export-tflite. Exit status 1 when any trial failed; the folders of failed trials
stay in the work folder (with each run's output beside them, ``NAME-NNN.K.out``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
WBC = [sys.executable, "-m", "wbc"]
EPOCHS = 4
MAX_RERUNS = 3
RECORD = 160  # bytes per event record in the shared log (offset // RECORD = event number)

# The data stages' settings: prepare and cv use the same ones, so that cv reuses the prepared
# augmentation instead of augmenting into its output folder.
DATA_SETTINGS = {
    "augment.per_class": "24",
    "augment.engine": "opencv",
    "augment.workers": "1",
    "subsets.small": "12",
    "subsets.medium": "16",
    "subsets.full": "24",
    "rename.find_duplicates": "false",
    "crop.mode": "detect",
}
STUDY_SETTINGS = {"train.image_size": "[40,48]", "train.patience": "null", "train.batch_size": "8"}
CNN_SETTINGS = {
    "model.cnn.image_size": "32",
    "model.cnn.widths": "[8,16]",
    "train.batch_size": "8",
}
GRID = "model.features.svm_c: [1.0, 10.0]\n"
RAW_COUNTS = {"NEUTROPHIL": 8, "EOSINOPHIL": 6, "LYMPHOCYTE": 5, "MONOCYTE": 5}

# Keys (JSON) and columns (CSV) that measure time or place, dropped before comparing outputs.
VOLATILE = re.compile(
    r"second|time|date|started|finished|elapsed|duration|host|pid|when|version|throughput|per_s",
    re.IGNORECASE,
)
# Names that only a write in progress leaves behind.
TEMP_NAME = re.compile(r"(^\..*(tmp|old|part|partial))|(\.(tmp|part|partial)$)|(\.tmp\.)|(^tmp)")


# --------------------------------------------------------------------------- fake raw data

_CLASS_SHAPES = {  # blob radius (fraction of the height) and x stretch, per class
    "NEUTROPHIL": (0.10, 1.0),
    "EOSINOPHIL": (0.18, 1.0),
    "LYMPHOCYTE": (0.12, 2.0),
    "MONOCYTE": (0.22, 0.5),
}


def synthetic_smear(cls: str, rng: np.random.Generator, size=(48, 64)):
    """A pinkish background with one class-shaped purple blob; the image and the blob's box."""
    height, width = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (228, 190, 200)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    radius_frac, aspect = _CLASS_SHAPES[cls]
    ry = max(2, int(radius_frac * height))
    rx = max(2, int(ry * aspect))
    cy = int(rng.integers(ry + 1, height - ry - 1))
    cx = int(rng.integers(min(rx + 1, width // 2), max(width - rx - 1, width // 2 + 1)))
    yy, xx = np.mgrid[:height, :width]
    image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = (95, 40, 140)
    box = (max(cx - rx, 0), max(cy - ry, 0), min(cx + rx, width - 1), min(cy + ry, height - 1))
    return image, box


def make_raw_folder(root: Path, counts: dict[str, int], size=(48, 64), seed: int = 0) -> Path:
    """A dataset-master look-alike: labels.csv (CRLF, index column), JPEGImages/, Annotations/."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    rows = [",Image,Category"]
    image_id = 0
    for cls, n in counts.items():
        for _ in range(n):
            array, (x0, y0, x1, y1) = synthetic_smear(cls, rng, size)
            name = f"BloodImage_{image_id:05d}"
            Image.fromarray(array).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            (root / "Annotations" / f"{name}.xml").write_text(
                f"<annotation><filename>{name}.jpg</filename><size><width>{size[1]}</width>"
                f"<height>{size[0]}</height><depth>3</depth></size><object><name>WBC</name>"
                f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
                "</bndbox></object></annotation>"
            )
            rows.append(f",{image_id},{cls}")
            image_id += 1
    (root / "labels.csv").write_bytes("\r\n".join(rows).encode())
    return root


# --------------------------------------------------------------------------- the write hook

SITECUSTOMIZE = f'''"""Write-event hook of scripts/kill_anywhere.py (imported at start-up)."""
import os

if os.environ.get("WBC_KILL_LOG"):
    import builtins
    import io
    import shutil
    import signal
    import threading
    import weakref

    _LOG = os.environ["WBC_KILL_LOG"]
    _ROOT = os.path.abspath(os.environ.get("WBC_KILL_ROOT", "/"))
    _AT = int(os.environ.get("WBC_KILL_AT_EVENT") or 0)
    _RECORD = {RECORD}
    _real_open = io.open
    _local = threading.local()
    _lock = threading.Lock()
    _fd = [None]

    def _reset_after_fork():
        _fd[0] = None

    os.register_at_fork(after_in_child=_reset_after_fork)

    def _path(path, dir_fd=None):
        try:
            if isinstance(path, int):
                return os.readlink(f"/proc/self/fd/{{path}}")
            path = os.fsdecode(path)
            if dir_fd is not None and not os.path.isabs(path):
                path = os.path.join(os.readlink(f"/proc/self/fd/{{dir_fd}}"), path)
            return os.path.abspath(path)
        except (OSError, TypeError, ValueError):
            return None

    def _under(path):
        return path is not None and (path == _ROOT or path.startswith(_ROOT + os.sep))

    def _event(kind, path, half=None):
        """Count one write event on ``path``; SIGKILL this process if it is the chosen one
        (after ``half()``, which does half of the work)."""
        if getattr(_local, "busy", False) or not _under(path):
            return
        with _lock:
            if _fd[0] is None:
                _fd[0] = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            line = f"{{os.getpid()}} {{kind}} {{path}}".encode(errors="replace")
            line = line[: _RECORD - 1].ljust(_RECORD - 1) + b"\\n"
            os.write(_fd[0], line)
            number = os.lseek(_fd[0], 0, os.SEEK_CUR) // _RECORD
        if _AT and number == _AT:
            _local.busy = True
            if half is not None:
                try:
                    half()
                except BaseException:
                    pass
            os.kill(os.getpid(), signal.SIGKILL)

    def _hook_file(handle, path):
        cls = type(handle)
        ref = weakref.ref(handle)  # no reference cycle: the file still closes when dropped

        def write(data):
            obj = ref()
            if len(data) > 1:

                def half():
                    cls.write(obj, data[: len(data) // 2])
                    cls.flush(obj)

                _event("write", path, half)
            return cls.write(obj, data)

        def close():
            obj = ref()
            if obj is not None and not obj.closed:
                _event("close", path)
            return cls.close(obj)

        handle.write = write
        handle.close = close

    def _open(file, mode="r", *args, **kwargs):
        if not isinstance(mode, str) or not any(c in mode for c in "wax+"):
            return _real_open(file, mode, *args, **kwargs)
        path = _path(file)
        if getattr(_local, "busy", False) or not _under(path):
            return _real_open(file, mode, *args, **kwargs)
        _event("open", path)
        handle = _real_open(file, mode, *args, **kwargs)
        try:
            _hook_file(handle, path)
        except (AttributeError, TypeError):
            pass
        return handle

    builtins.open = io.open = _open

    def _wrap(name, targets=(0,)):
        real = getattr(os, name)

        def wrapper(*args, **kwargs):
            for i in targets:
                if i < len(args):
                    dir_fd = kwargs.get("dst_dir_fd" if i else "src_dir_fd", kwargs.get("dir_fd"))
                    _event(name, _path(args[i], dir_fd))
            return real(*args, **kwargs)

        wrapper.__wrapped__ = real
        setattr(os, name, wrapper)

    for _name, _targets in (
        ("replace", (1,)), ("rename", (1,)), ("fsync", (0,)), ("unlink", (0,)),
        ("remove", (0,)), ("rmdir", (0,)), ("mkdir", (0,)), ("link", (1,)),
        ("symlink", (1,)),
    ):
        _wrap(_name, _targets)

    _real_copyfile = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):
        target = _path(dst)

        def half():
            with _real_open(src, "rb") as source, _real_open(dst, "wb") as out:
                data = source.read()
                out.write(data[: len(data) // 2])

        _event("copyfile", target, half)
        _local.busy = True  # the copy's own open/write calls are part of this one event
        try:
            return _real_copyfile(src, dst, *args, **kwargs)
        finally:
            _local.busy = False

    shutil.copyfile = copyfile
'''


# --------------------------------------------------------------------------- commands


def wbc(*parts) -> list[str]:
    return [*WBC, *map(str, parts)]


def settings(values: dict[str, str]) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@dataclasses.dataclass
class Command:
    """One wbc command under test, run in a trial folder ``t``: ``argv(t)`` is its command line,
    ``setup(t)`` copies in the state it starts from, ``rerun(t)`` continues a killed run (None:
    rerun ``argv``). Checks: ``compare`` globs the outputs that must equal the reference's,
    ``histories`` asks for every epoch once in each history.csv, ``manifests`` for the
    reference's stage digests, ``after`` names the command whose reference ``setup`` copies."""

    name: str
    argv: Callable[[Path], list[str]]
    rerun: Callable[[Path], list[str] | None] | None = None
    setup: Callable[[Path], object] | None = None
    compare: tuple[str, ...] = ()
    histories: bool = False
    manifests: bool = False
    after: str | None = None


def build_commands(work: Path) -> list[Command]:
    raw, data, grid = work / "raw" / "dataset-master", prepared_data(work), work / "grid.yaml"
    features = ["--config", REPO / "configs/default.yaml"]
    study = ["--config", REPO / "configs/study.yaml"]
    cnn = ["--config", REPO / "configs/cnn.yaml"]
    ray = ["--executor", "ray", "--cpus-per-trial", "1"]

    def prepare(t: Path) -> list[str]:
        return wbc(
            "prepare", *features, "--raw", raw, "--data-dir", t / "data", *settings(DATA_SETTINGS)
        )

    def tune(t: Path) -> list[str]:
        return wbc(
            "tune", *features, "--data-dir", data, "--grid", grid, "--subset", "small",
            "--out", t / "out",
        )  # fmt: skip

    def train(config, extra):
        return lambda t: wbc(
            "train", *config, "--data-dir", data, "--subset", "small", "--epochs", EPOCHS,
            "--run-dir", t / "run", *settings(extra),
        )  # fmt: skip

    def resume(t: Path) -> list[str] | None:
        """A killed training continues with --resume once its folder is a run (it holds
        config.yaml); one killed before that is started again with the same command, as wbc's
        messages say ("not a run folder" / "already holds a run; continue it with --resume")."""
        return wbc("train", "--resume", t / "run") if (t / "run" / "config.yaml").exists() else None

    def cv(config, extra, executor=()):
        return lambda t: wbc(
            "cv", *config, "--data-dir", data, "--folds", 2, "--epochs", EPOCHS,
            "--per-class", 12, "--out", t / "out", *settings({**DATA_SETTINGS, **extra}),
            *executor,
        )  # fmt: skip

    def export(fmt: str):
        check = data / "processed" / "small" / "test"
        return lambda t: wbc("export", t / "run", "--format", fmt, "--check", check)

    def copy_run(name: str):
        return lambda t: shutil.copytree(trial_root(work, name, "ref") / "run", t / "run")

    skops = ("model.skops", "train_features.npz", "classes.json", "metrics.json", "domain.json")
    cells = ("out/*/model.skops", "out/*/metrics.json", "out/*/classes.json")
    return [
        Command("prepare", prepare, manifests=True),
        Command(
            "train-features",
            train(features, {}),
            resume,
            compare=tuple(f"run/{name}" for name in skops),
        ),
        Command("train-study", train(study, STUDY_SETTINGS), resume, histories=True),
        Command("train-cnn", train(cnn, CNN_SETTINGS), resume, histories=True),
        Command("cv-local", cv(features, {}), compare=("out/cv.json", "out/folds.json", *cells)),
        Command("cv-ray", cv(study, STUDY_SETTINGS, ray), histories=True),
        Command("tune", tune, compare=("out/results.csv", *cells)),
        Command(
            "export-onnx",
            export("onnx"),
            setup=copy_run("train-features"),
            compare=("run/export/model.onnx", "run/export/model.onnx.json"),
            after="train-features",
        ),
        Command(
            "export-tflite",
            export("tflite"),
            setup=copy_run("train-study"),
            compare=("run/export/model.tflite", "run/export/model.tflite.json"),
            after="train-study",
        ),
    ]


def trial_root(work: Path, name: str, tag: str) -> Path:
    """``WORK/runs/NAME-TAG`` with a 3-character tag (``ref``, ``rf2``, ``000``...): every root
    of a command has the same length, so outputs that embed their own path (ONNX metadata) can
    be compared byte for byte once the root is masked."""
    assert len(tag) == 3, tag
    return work / "runs" / f"{name}-{tag}"


def prepared_data(work: Path) -> Path:
    """The reference prepare's data folder: the input of every other command."""
    return trial_root(work, "prepare", "ref") / "data"


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Outcome:
    rc: int
    seconds: float
    killed: bool  # SIGKILLed, by the harness or by the hook
    timed_out: bool
    strays: int  # processes still alive after the run, killed by their mark
    output: str


class Harness:
    def __init__(self, workdir: Path, seed: int, kills_per_trial: int = 1):
        self.work = workdir
        self.seed = seed
        self.kills_per_trial = kills_per_trial
        self.hook = workdir / "hook"
        self.data = prepared_data(workdir)
        self.commands = build_commands(workdir)
        self.refs: dict[str, dict] = {}
        self.runs = 0

    def create(self) -> None:
        self.hook.mkdir(parents=True, exist_ok=True)
        (self.hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        raw = self.work / "raw" / "dataset-master"
        if not raw.is_dir():
            make_raw_folder(raw, RAW_COUNTS)
        (self.work / "grid.yaml").write_text(GRID)

    def environment(self, root: Path, mark: str, log: Path | None, at_event: int) -> dict:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "MPLBACKEND": "Agg",
            # Set iteration order fixed: skl2onnx orders an ONNX file's opset imports by it, so
            # two clean exports differ in bytes under random hash seeds.
            "PYTHONHASHSEED": "0",
            "WBC_CACHE_DIR": str(root / "cache"),  # the LiteRT cache is part of the trial's state
            "WBC_KILL_MARK": mark,
        }
        for key in ("WBC_KILL_LOG", "WBC_KILL_ROOT", "WBC_KILL_AT_EVENT"):
            env.pop(key, None)
        if log is not None:
            paths = [str(self.hook), os.environ.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
            env.update(
                WBC_KILL_LOG=str(log), WBC_KILL_ROOT=str(root), WBC_KILL_AT_EVENT=str(at_event)
            )
        return env

    def run(
        self,
        argv: list[str],
        root: Path,
        *,
        log: Path | None = None,
        at_event: int = 0,
        kill_after: float | None = None,
        timeout: float = 900.0,
    ) -> Outcome:
        """Run ``argv`` in a new process group, SIGKILL the group after ``kill_after`` seconds,
        then SIGKILL whatever still carries this run's mark (Ray's processes)."""
        self.runs += 1
        mark = f"{os.getpid()}-{self.runs}"
        output = root.parent / f"{root.name}.{self.runs}.out"
        limit = timeout if kill_after is None else min(kill_after, timeout)
        killed = timed_out = False
        started = time.monotonic()
        with open(output, "wb") as sink:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=self.environment(root, mark, log, at_event),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                killed, timed_out = limit != timeout, limit == timeout
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        seconds = time.monotonic() - started
        strays = kill_marked(mark)
        return Outcome(
            rc=process.returncode,
            seconds=seconds,
            killed=killed or process.returncode == -signal.SIGKILL,
            timed_out=timed_out,
            strays=strays,
            output=output.read_text(errors="replace"),
        )

    def fresh(self, command: Command, tag: str) -> Path:
        root = trial_root(self.work, command.name, tag)
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        if command.setup:
            command.setup(root)
        return root

    # ----------------------------------------------------------------- references

    def reference(self, command: Command) -> None:
        """Run ``command`` uninterrupted (twice when it has outputs to compare): its duration,
        write events, files and output digests are what trials are measured against."""
        root = self.fresh(command, "ref")
        ref = self.clean_run(command, root, "reference")
        ref["outputs"], ref["files"], ref["unstable"] = snapshot(root, command), listing(root), []
        if command.compare:
            root2 = self.fresh(command, "rf2")
            again = self.clean_run(command, root2, "2nd reference")
            other = snapshot(root2, command)
            ref["unstable"] = sorted(
                name
                for name, digest in ref["outputs"]["files"].items()
                if other["files"].get(name) != digest
            )
            ref["seconds"] = min(ref["seconds"], again["seconds"])
            for name in ref["unstable"]:
                print(
                    f"  note: {command.name}: {name} differs between two clean runs: not compared"
                )
            shutil.rmtree(root2)
        self.refs[command.name] = ref

    def clean_run(self, command: Command, root: Path, what: str) -> dict:
        log = root.parent / f"{root.name}.events"
        log.unlink(missing_ok=True)
        outcome = self.run(command.argv(root), root, log=log)
        if outcome.rc != 0:
            raise SystemExit(
                f"{command.name}: the {what} run failed (exit {outcome.rc}):\n"
                f"{outcome.output[-3000:]}"
            )
        events = read_events(log)
        kinds = count_kinds(events)
        print(
            f"  {command.name:<14} {what}: {outcome.seconds:5.1f}s, {len(events)} write events "
            f"({', '.join(f'{kind} {n}' for kind, n in kinds.items())})",
            flush=True,
        )
        return {"seconds": outcome.seconds, "events": len(events), "event_kinds": kinds}

    # ----------------------------------------------------------------- trials

    def trial(self, command: Command, index: int) -> dict:
        """Kill ``command`` once (at a uniform instant or at a write event), rerun it until it
        completes, check what it left."""
        ref = self.refs[command.name]
        rng = np.random.default_rng([self.seed, self.commands.index(command), index])
        root = self.fresh(command, f"{index:03d}")
        inputs = tree_digest(self.data) if command.name != "prepare" else None
        log = root.parent / f"{root.name}.events"
        log.unlink(missing_ok=True)
        record: dict = {"command": command.name, "trial": index, "failures": [], "notes": []}
        started = time.monotonic()
        # Uniform and write-biased kills alternate, starting with the other kind on every other
        # command (so that a budget of one kill per command still tries both).
        at_event = 0
        if (index + self.commands.index(command)) % 2 and ref["events"]:
            at_event = int(rng.integers(1, ref["events"] + 1))
            record["kill"] = f"write #{at_event}/{ref['events']}"
            first = self.run(command.argv(root), root, log=log, at_event=at_event)
        else:
            instant = float(rng.uniform(0.0, ref["seconds"]))
            record["kill"] = f"t={instant:.1f}s/{ref['seconds']:.0f}s"
            first = self.run(command.argv(root), root, log=log, kill_after=instant)
        events = read_events(log)
        # The process that made event K killed itself; when that was a worker (Ray, a pool),
        # the command itself may still have finished.
        worker = at_event and len(events) >= at_event and not first.killed
        record["killed"] = "yes" if first.killed else "worker" if worker else "no"
        hit = at_event and len(events) >= at_event
        record["last_write"] = events[at_event - 1] if hit else events[-1] if events else ""
        record["reruns"] = 0
        strays = first.strays
        if record["killed"] == "no" and first.rc == 0:  # a faster clean run: aim within it
            ref["seconds"] = min(ref["seconds"], first.seconds)
        if record["killed"] == "no" and first.rc != 0:
            record["failures"].append(f"unkilled run: exit {first.rc}: {last_error(first.output)}")
        done = first.rc == 0
        record["kills"] = int(record["killed"] != "no")
        # --kills-per-trial N: the reruns are killed too, each at a new instant or write event,
        # before one is let finish: a resume that is itself killed must still resume.
        for chained in range(1, self.kills_per_trial):
            if done:
                break
            argv = (command.rerun and command.rerun(root)) or command.argv(root)
            if chained % 2 and ref["events"]:
                again = self.run(
                    argv,
                    root,
                    log=log,
                    at_event=len(read_events(log)) + int(rng.integers(1, ref["events"] + 1)),
                )
            else:
                again = self.run(argv, root, kill_after=float(rng.uniform(0.0, ref["seconds"])))
            strays += again.strays
            record["kills"] += int(again.killed)
            done = again.rc == 0
        while not done and record["reruns"] < MAX_RERUNS:
            argv = (command.rerun and command.rerun(root)) or command.argv(root)
            record["reruns"] += 1
            again = self.run(argv, root, timeout=max(300.0, 8 * ref["seconds"]))
            strays += again.strays
            done = again.rc == 0
            if not done:
                how = "hung (killed after the timeout)" if again.timed_out else f"exit {again.rc}"
                line = " ".join(argv[len(WBC) : len(WBC) + 2]).replace(str(root), "T")
                record["failures"].append(
                    f"rerun {record['reruns']} (wbc {line}) {how}: {last_error(again.output)}"
                )
        record["recovered"] = done
        if done:
            self.check(command, root, ref, record)
        if inputs is not None and tree_digest(self.data) != inputs:
            record["failures"].append(f"the shared input data changed: {self.data}")
        if strays:
            record["notes"].append(f"{strays} stray process(es) outlived the run: killed")
        record["seconds"] = time.monotonic() - started
        return record

    def check(self, command: Command, root: Path, ref: dict, record: dict) -> None:
        failures, notes = record["failures"], record["notes"]
        leftovers = temp_files(root)
        if leftovers:
            failures.append("temporary files left: " + ", ".join(leftovers[:6]))
        now = snapshot(root, command)
        for name, digest in ref["outputs"]["files"].items():
            if name not in ref["unstable"] and now["files"].get(name, digest) != digest:
                failures.append(f"{name} differs from the uninterrupted run's")
        if command.manifests and now["manifests"] != ref["outputs"]["manifests"]:
            expected = ref["outputs"]["manifests"]
            differ = sorted(
                stage
                for stage in set(now["manifests"]) | set(expected)
                if now["manifests"].get(stage) != expected.get(stage)
            )
            failures.append("manifest digests differ from the reference's: " + ", ".join(differ))
        if command.histories:
            histories = sorted(root.rglob("history.csv"))
            if not histories:
                failures.append("no history.csv")
            for path in histories:
                epochs = history_epochs(path)
                if epochs != list(range(EPOCHS)):
                    failures.append(
                        f"{path.relative_to(root)}: epochs {epochs}, not 0..{EPOCHS - 1}"
                    )
        files = listing(root)
        missing = sorted(set(ref["files"]) - set(files))
        if missing:
            failures.append("missing (the reference has them): " + ", ".join(missing[:6]))
        extra = [name for name in sorted(set(files) - set(ref["files"])) if not is_temp_path(name)]
        if extra:
            notes.append("extra files: " + ", ".join(extra[:6]))


# --------------------------------------------------------------------------- checks


def kill_marked(mark: str) -> int:
    """SIGKILL every process whose environment holds ``WBC_KILL_MARK=mark`` (a killed driver's
    Ray raylet, GCS and workers); returns how many were alive."""
    needle = f"WBC_KILL_MARK={mark}\0".encode()
    found: set[int] = set()
    for _ in range(50):
        alive = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if needle in environ:
                try:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                if state != "Z":
                    alive.append(int(entry.name))
        if not alive:
            break
        for pid in alive:
            found.add(pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    return len(found)


def read_events(log: Path) -> list[str]:
    if not log.is_file():
        return []
    data = log.read_bytes()
    return [
        data[i : i + RECORD].decode(errors="replace").strip() for i in range(0, len(data), RECORD)
    ]


def count_kinds(events: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for event in events:
        kind = event.split(" ", 2)[1] if event.count(" ") >= 2 else "?"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def last_error(tail: str) -> str:
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(("Error:", "error:")) or re.match(r"^\w+(Error|Exception)\b", line):
            return line[:300]
    return (lines[-1] if lines else "(no output)")[:300]


def is_temp(name: str) -> bool:
    return bool(TEMP_NAME.search(name))


def is_temp_path(relative: str) -> bool:
    return any(is_temp(part) for part in Path(relative).parts)


def temp_files(root: Path) -> list[str]:
    """Paths under ``root`` that look like a write in progress (hidden temp files and folders,
    .tmp/.partial suffixes), outermost only."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(is_temp(part) for part in rel.parts[:-1]):
            continue
        if is_temp(path.name):
            found.append(str(rel) + ("/" if path.is_dir() else ""))
    return found


def listing(root: Path) -> list[str]:
    """The files under ``root`` a rerun must also leave, by relative path (TensorBoard's event
    files are named by time and host; the LiteRT cache by digest)."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not {"tensorboard", "cache"} & set(rel.parts):
            found.append(str(rel))
    return sorted(found)


def snapshot(root: Path, command: Command) -> dict:
    """Digests of the files ``command.compare`` names (time and place left out) and the
    prepared stages' manifest digests."""
    files = {}
    for pattern in command.compare:
        for path in sorted(root.glob(pattern)):
            relative = str(path.relative_to(root))
            if is_temp_path(relative):
                continue
            try:
                files[relative] = content_digest(path, root)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                files[relative] = f"unreadable ({type(exc).__name__}: {exc})"
    manifests = {}
    if command.manifests:
        for path in sorted(root.rglob("manifest.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                manifests[str(path.parent.relative_to(root))] = json.loads(path.read_text())[
                    "digest"
                ]
    return {"files": files, "manifests": manifests}


def content_digest(path: Path, root: Path) -> str:
    """sha256 of a file's content: zip archives by their members (``zip_digest``), JSON without
    timing keys, CSV without timing columns; the trial folder's path is masked everywhere."""
    if zipfile.is_zipfile(path):
        return zip_digest(path)
    where = str(root).encode()
    data = path.read_bytes().replace(where, b"#" * len(where))
    if path.suffix == ".json":
        with contextlib.suppress(ValueError):
            data = json.dumps(drop_volatile(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(data.decode(errors="replace"))))
        if rows:
            keep = [i for i, name in enumerate(rows[0]) if not VOLATILE.search(name)]
            data = "\n".join(
                ",".join(row[i] for i in keep if i < len(row)) for row in rows
            ).encode()
    return hashlib.sha256(data).hexdigest()


def zip_digest(path: Path) -> str:
    """sha256 of a zip archive's members, independent of member names, timestamps and order.
    skops names its arrays and numbers its objects by ``id()``: JSON members have each ``"file"``
    replaced by that member's content digest and each ``"__id__"`` renumbered by first use."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    parts = []
    for name, data in members.items():
        if not name.endswith(".json"):
            parts.append(digests[name])
            continue
        text = data.decode(errors="replace")
        text = re.sub(r'"file": "([^"]+)"', lambda m: f'"file": "{digests.get(m[1], m[1])}"', text)
        ids: dict[str, str] = {}
        for number in re.findall(r'"__id__": (\d+)', text):
            ids.setdefault(number, str(len(ids)))
        if ids:
            text = re.sub(r"\b\d{6,}\b", lambda m, ids=ids: ids.get(m[0], m[0]), text)
        parts.append(name + "\0" + text)
    return hashlib.sha256("\0".join(sorted(parts)).encode()).hexdigest()


def drop_volatile(value):
    if isinstance(value, dict):
        return {k: drop_volatile(v) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list):
        return [drop_volatile(v) for v in value]
    return value


def history_epochs(path: Path) -> list:
    try:
        with open(path, newline="") as handle:
            return [int(float(row["epoch"])) for row in csv.DictReader(handle)]
    except (OSError, KeyError, ValueError) as exc:
        return [f"unreadable: {exc}"]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            stat = path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- main


def allocate(total: int, cost: dict[str, float]) -> dict[str, int]:
    """Spread ``total`` kills over the commands in proportion to 1/sqrt(seconds per trial): a
    cheap command gets more kills than a slow one, but not so many that the slow ones get none.
    At least one kill each (two when the total allows: one uniform, one write-biased)."""
    least = 2 if total >= 2 * len(cost) else 1 if total >= len(cost) else 0
    weights = {name: seconds**-0.5 for name, seconds in cost.items()}
    share = max(0, total - least * len(cost))
    scaled = {name: share * w / sum(weights.values()) for name, w in weights.items()}
    kills = {name: least + int(x) for name, x in scaled.items()}
    for name in sorted(scaled, key=lambda n: scaled[n] - int(scaled[n]), reverse=True):
        if sum(kills.values()) >= total:
            break
        kills[name] += 1
    return kills


def describe(record: dict, number: int, total: int) -> str:
    status = "ok" if not record["failures"] else "FAIL: " + " | ".join(record["failures"])
    last = record["last_write"].split(" ", 1)[1] if record["last_write"] else "-"
    notes = f"  [{'; '.join(record['notes'])}]" if record["notes"] else ""
    return (
        f"[{number:>3}/{total}] {record['command']:<14} kill {record['kill']:<16} "
        f"killed {record['killed']:<6} kills {record.get('kills', 0)}  "
        f"recovered {'yes' if record['recovered'] else 'no ':<3} reruns {record['reruns']}  "
        f"{record['seconds']:5.1f}s  last write: {shorten(last)}  {status}{notes}"
    )


def shorten(event: str, width: int = 60) -> str:
    """``kind /long/path/runs/name-000/x/y`` as ``kind .../x/y``."""
    match = re.match(r"(\S+) .*/runs/[^/]+-\d{3}(/.*)?$", event)
    if match:
        event = f"{match[1]} {match[2] or '/'}"
    return event if len(event) <= width else "..." + event[-width + 3 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="SIGKILL wbc commands at random instants and write events; check each rerun.",
        epilog="Design notes: the module docstring of scripts/kill_anywhere.py.",
    )
    parser.add_argument(
        "--kills", type=int, default=80, help="total kills, spread over the commands (default 80)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill instants (default 0)")
    parser.add_argument("--only", metavar="CMD[,CMD]", help="only these commands (default: all)")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a new temp folder)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the summary here")
    parser.add_argument(
        "--minutes",
        type=float,
        default=60.0,
        help="start no trial after this many minutes (default 60); the rest are skipped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the folders of passed trials")
    parser.add_argument(
        "--kills-per-trial",
        type=int,
        default=1,
        metavar="N",
        help="kill the first run and up to N-1 of its reruns before one may finish (default 1)",
    )
    args = parser.parse_args(argv)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="wbc-kill-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    harness = Harness(workdir, args.seed, max(1, args.kills_per_trial))
    names = [command.name for command in harness.commands]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown command {', '.join(unknown)}; choose from {', '.join(names)}")
    selected = [command for command in harness.commands if command.name in chosen]
    needed = {"prepare"} | {c.after or c.name for c in selected} | {c.name for c in selected}
    harness.create()
    started = time.monotonic()
    print(f"work folder: {workdir}\nreferences (uninterrupted, write events counted):", flush=True)
    for command in harness.commands:
        if command.name in needed:
            harness.reference(command)

    # A trial: the killed run (half the reference on average), the rerun, the copies and checks.
    cost = {c.name: 1.75 * harness.refs[c.name]["seconds"] + 2 for c in selected}
    kills = allocate(args.kills, cost)
    per = max(1, args.kills_per_trial)
    trials_of = {name: -(-k // per) for name, k in kills.items()}  # chained kills share a trial
    estimate = sum(kills[name] * seconds for name, seconds in cost.items()) / 60
    print(
        f"\n{args.kills} kills ({', '.join(f'{n} {k}' for n, k in kills.items())}): "
        f"about {estimate:.0f} min\n",
        flush=True,
    )
    # Round robin over the commands, so that --minutes cuts every command's share evenly.
    order = [
        (command, index)
        for index in range(max(trials_of.values(), default=0))
        for command in selected
        if index < trials_of[command.name]
    ]
    trials: list[dict] = []
    code = tree_digest(REPO / "wbc")
    for number, (command, index) in enumerate(order, 1):
        if time.monotonic() - started > args.minutes * 60:
            print(f"time is up (--minutes {args.minutes:g}): {len(order) - len(trials)} skipped")
            break
        if code and tree_digest(REPO / "wbc") != code:
            print("warning: wbc/ changed since the references ran: later trials test other code")
            code = ""
        record = harness.trial(command, index)
        trials.append(record)
        print(describe(record, number, len(order)), flush=True)
        if not args.keep and not record["failures"]:
            shutil.rmtree(trial_root(workdir, command.name, f"{index:03d}"), ignore_errors=True)

    table = {}
    header = ("command", "trials", "kills", "recovered", "failed", "s/trial", "ref s", "writes")
    print("\n{:<14} {:>6} {:>6} {:>9} {:>6} {:>7} {:>6} {:>6}".format(*header))
    for command in selected:
        rows = [t for t in trials if t["command"] == command.name]
        ref = harness.refs[command.name]
        entry = {
            "trials": len(rows),
            "kills": sum(t.get("kills", int(t["killed"] != "no")) for t in rows),
            "recoveries": sum(t.get("kills", 0) > 0 and t["recovered"] for t in rows),
            "failures": sum(bool(t["failures"]) for t in rows),
            "seconds_per_trial": sum(t["seconds"] for t in rows) / max(1, len(rows)),
            "reference_seconds": ref["seconds"],
            "write_events": ref["events"],
        }
        table[command.name] = entry
        print(
            "{:<14} {:>6} {:>6} {:>9} {:>6} {:>7.1f} {:>6.1f} {:>6}".format(
                command.name, *list(entry.values())
            )
        )
    failed = sum(entry["failures"] for entry in table.values())
    for record in trials:
        if record["failures"]:
            folder = trial_root(workdir, record["command"], f"{record['trial']:03d}")
            print(f"\nFAILED {record['command']} #{record['trial']} ({record['kill']}): {folder}")
            print("\n".join(f"  - {failure}" for failure in record["failures"]))
    minutes = (time.monotonic() - started) / 60
    print(f"\n{failed} failed trial(s) of {len(trials)}, {minutes:.1f} min; work folder {workdir}")
    if args.json:
        summary = {"seed": args.seed, "kills": args.kills, "minutes": minutes}
        summary.update(workdir=str(workdir), commands=table, trials=trials, references=harness.refs)
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
