"""Where ``wbc cv`` folds and ``wbc tune`` cells train: here, one after the other (``local``), or
as Ray tasks across a cluster (``ray``).

Why Ray: the work is many independent trainings, which is what Ray tasks are for, while
multi-node ``tf.distribute`` does not work with Keras 3's ``fit`` (keras-team/keras#20585).

Design:

- **A shared folder, not the object store.** Every task reads its fold's data and writes its run
  folder under ``--out``, which every node must see (NFS, a cloud file system): the same
  contract as Ray Tune's storage path. The fold data are thousands of JPEGs that ``wbc cv``
  already writes there, and a run folder (model, backup of the last epoch, history) must
  survive the worker, so that a rerun or a retried task resumes where it was.
- **TensorFlow's threads capped to ``--cpus-per-trial``** (``TF_NUM_INTRAOP_THREADS`` and
  friends in the job's environment), so that tasks on one node do not fight over cores. Worker
  processes are reused, so TensorFlow is imported once per worker, not once per task; each task
  clears the Keras session when it ends.
- **Retries:** a task whose worker dies (killed, out of memory, node lost) is retried by Ray
  (``max_retries``); the retry resumes the run folder from its last finished epoch, as
  ``wbc train --resume`` does. Finished folds and cells are skipped on rerun, as locally.
- **Identical results:** a task runs the same ``wbc.workflows.train.train`` with the same config and
  seed as the local executor; the driver then scores and tabulates exactly as locally.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from wbc.core.errors import ConfigError, DataError

EXECUTORS = ("local", "ray")
INSTALL_HINT = "pip install 'wbc[ray]'"
MAX_RETRIES = 3


@dataclass(frozen=True)
class RayOptions:
    """``--executor ray`` settings: where the cluster is and what each task may use."""

    address: Optional[str] = None  # None: $RAY_ADDRESS if set, else a local Ray instance
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    local_cpus: Optional[int] = None  # a local instance's CPUs (default: all)


@dataclass
class TrainJob:
    """One training to run remotely: ``wbc.workflows.train.train(config, **kwargs)``; resumes its
    ``run_dir`` when it holds progress (a retry, or a rerun of a killed job)."""

    label: str
    config: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


def check_executor(name: str) -> None:
    """One line naming the choices when ``--executor`` is neither of ``EXECUTORS``."""
    if name not in EXECUTORS:
        raise ConfigError(f"--executor: '{name}' is not one of {', '.join(EXECUTORS)}")


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def connect(options: RayOptions, echo: Callable[[str], None]):
    """``ray.init`` on the cluster (or a local instance); a one-line error when unreachable."""
    ray = _ray()
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return ray
    # TensorFlow's C++ start-up chatter would be forwarded from every task: keep it quiet.
    # TensorFlow's thread pools are capped to a task's CPUs through the variables it reads at
    # start-up, so that a worker process can be reused for the next task (importing
    # TensorFlow again would cost seconds per task).
    quiet = {
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        **thread_caps(options.cpus_per_trial),
    }
    kwargs: dict[str, Any] = {
        "log_to_driver": True,
        "include_dashboard": False,
        "runtime_env": {"env_vars": quiet},
    }
    if address is None:
        kwargs["num_cpus"] = options.local_cpus or os.cpu_count() or 1
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Ray cluster at {address}: cannot connect ({reason})") from None
    resources = ray.cluster_resources()
    echo(
        f"ray: {'cluster ' + address if address else 'local instance'} with "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs, "
        f"{len(ray.nodes())} node(s)"
    )
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line ``DataError`` when a ``host:port`` cluster address does not answer: Ray itself
    retries an unreachable address for a minute or more before it gives up."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DataError(f"Ray cluster at {address}: cannot connect ({reason})") from None


def thread_caps(cpus: float) -> dict[str, str]:
    """The variables that cap OpenMP's and TensorFlow's thread pools to ``cpus`` (rounded up);
    TensorFlow reads them when it starts."""
    threads = str(max(1, math.ceil(cpus)))
    return {
        name: threads
        for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
    }


def _cap_threads(cpus: float) -> None:
    """A task's thread pools to its ``cpus``, without importing TensorFlow: a features task
    never needs it (seconds per worker), and a Keras family's import in this worker picks the
    variables up. A worker where TensorFlow already runs keeps what it has."""
    for name, value in thread_caps(cpus).items():
        os.environ.setdefault(name, value)


def _train_task(job: TrainJob, cpus: float, train: Callable[..., Path]) -> dict[str, Any]:
    """Runs in a Ray worker: one training (``train``: ``wbc.workflows.train.train``, which Ray
    pickles by reference), resumed when its run folder holds progress."""
    start = time.perf_counter()
    _cap_threads(cpus)
    from wbc.models.checkpoint import has_progress

    kwargs = dict(job.kwargs)
    run_dir = Path(kwargs["run_dir"])
    if has_progress(run_dir) and not (run_dir / "metrics.json").is_file():
        kwargs["resume_dir"] = run_dir
    prefix = f"[{job.label} @ {socket.gethostname()}]"
    train(job.config, echo=lambda message: print(f"{prefix} {message}", flush=True), **kwargs)
    from wbc.models.training import clear_session

    clear_session()  # the worker is reused: free this model's graph and memory
    return {
        "label": job.label,
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "seconds": time.perf_counter() - start,
    }


def run_trainings(
    jobs: Sequence[TrainJob],
    options: RayOptions,
    echo: Callable[[str], None],
    train: Callable[..., Path],
) -> list[dict[str, Any]]:
    """Every job as one Ray task running ``train`` (the caller's ``wbc.workflows.train.train``:
    handed in, so that this module needs nothing of the workflows that use it); returns their
    reports in completion order. A task that raises (a config or data error) stops the run
    with its message, like the local executor."""
    if not jobs:
        return []
    ray = connect(options, echo)
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_train_task)
    pending = {
        remote.options(num_cpus=options.cpus_per_trial, num_gpus=options.gpus_per_trial).remote(
            job, options.cpus_per_trial, train
        ): job
        for job in jobs
    }
    echo(
        f"ray: {len(jobs)} task(s) submitted ({options.cpus_per_trial:g} CPU, "
        f"{options.gpus_per_trial:g} GPU each)"
    )
    from wbc.core.progress import bar

    reports = []
    with bar(len(jobs), "ray tasks", unit="task") as shown:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                report = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                for ref in pending:
                    ray.cancel(ref, force=True)
                message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
                raise DataError(f"{job.label}: failed on Ray ({message})") from None
            shown.update(1)
            echo(f"{job.label}: trained on {report['node']} in {report['seconds']:.1f} s (ray)")
            reports.append(report)
    return reports


# --------------------------------------------------------------------------- predict on Ray Data
