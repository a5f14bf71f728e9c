"""Killed and concurrent runs: a project lock, a run journal, and clean-up on SIGTERM / Ctrl-C.

- **Lock** (``data/.run.lock``, ``fcntl.flock``): a ``kedro run`` of whole pipelines holds it
  exclusively, so a second one (a user and the scheduler) is refused at once with the running
  one's pid, pipelines and start time. Runs of named nodes (the Airflow DAG's tasks, which run in
  parallel on one project) share it: they exclude whole runs, not each other. The kernel drops a
  ``flock`` when its process dies, so a killed run never leaves a stale lock behind. A
  non-chief ``multi_worker_mirrored`` worker (``TF_CONFIG``) takes no lock: it runs beside the
  chief and writes nothing the chief keeps.
- **Journal** (``data/run_journal.jsonl``): one line when a run starts (pid, pipelines, start
  time) and one when it ends (completed, failed, interrupted); the next run and
  ``python -m osteo_pipeline.rerun --dry-run`` read it and say when the last run did not finish.
- **SIGTERM / SIGINT** (Airflow's task timeout, Ctrl-C): the run stops at the next Python
  instruction with :class:`RunInterrupted` (a ``SystemExit``, exit code 128 + signal), every
  MLflow run it opened (kedro-mlflow's parent, the loop's fold and final-fit runs, runs made with
  ``MlflowClient.create_run``) ends ``KILLED``, and the version folder of any save in progress is
  removed, so each saved version is complete or absent.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there (the journal and clean-up still work)
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_FILE = "data/.run.lock"
HOLDERS_DIR = "data/.run_holders"  # one small file per lock holder: who to name when refusing
JOURNAL_FILE = "data/run_journal.jsonl"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunLockedError(RuntimeError):
    """Another ``kedro run`` holds the project."""


class RunInterrupted(SystemExit):
    """SIGTERM or SIGINT arrived during a run; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum
        self.signame = signal.Signals(signum).name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_non_chief_worker(tf_config: str | None = None) -> bool:
    """True for a ``multi_worker_mirrored`` worker other than the chief (``TF_CONFIG``)."""
    raw = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not raw:
        return False
    try:
        config = json.loads(raw)
        task = config.get("task") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError):
        return False  # a malformed TF_CONFIG is the training loop's to report
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return not (kind == "chief" or (kind == "worker" and index == 0 and not has_chief))


# ---------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holders(project: Path) -> list[dict[str, Any]]:
    found = []
    folder = project / HOLDERS_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(int(holder.get("pid", -1))):
            found.append(holder)
    return found


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123, pipelines train_cnn21, started 2026-...`` (``nodes ...`` for a node-group run)."""
    what = f"pipelines {','.join(holder.get('pipelines') or ['__default__'])}"
    if holder.get("nodes"):
        what += f" (nodes {','.join(holder['nodes'])})"
    return f"pid {holder.get('pid')}, {what}, started {holder.get('started')}"


def running_now(project: Path) -> list[dict[str, Any]]:
    """The runs holding the project lock now (empty when none); takes nothing."""
    path = project / LOCK_FILE
    if fcntl is None or not path.exists():
        return []
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holders(project) or [{"pid": "?", "pipelines": ["?"], "started": "?"}]
        fcntl.flock(handle, fcntl.LOCK_UN)
    return []


@dataclass
class ProjectLock:
    """The project lock, held by this process until :meth:`release` or its exit."""

    project: Path
    info: dict[str, Any]
    shared: bool = False
    _handle: Any = None

    def acquire(self) -> None:
        if fcntl is None:
            logger.warning("no fcntl on this system: the project is not locked against a second run")
            return
        path = self.project / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a+")
        try:
            fcntl.flock(self._handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            self._handle = None
            time.sleep(0.2)  # a holder that has just locked may not have written its name yet
            holders = _holders(self.project)
            named = "; ".join(describe_holder(h) for h in holders) or "a process that has not said which"
            raise RunLockedError(
                f"another `kedro run` is using this project ({self.project}): {named}. "
                f"Wait for it to finish (or stop it), then run again. Lock: {LOCK_FILE}."
            ) from None
        holders = self.project / HOLDERS_DIR
        holders.mkdir(exist_ok=True)
        (holders / f"{os.getpid()}.json").write_text(json.dumps(self.info))

    def release(self) -> None:
        if fcntl is None or self._handle is None:
            return
        (self.project / HOLDERS_DIR / f"{os.getpid()}.json").unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


# ---------------------------------------------------------------------------- journal


def journal_write(project: Path, record: dict[str, Any]) -> None:
    """Append one line to the run journal (a short ``O_APPEND`` write: parallel runs do not mix)."""
    path = project / JOURNAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record) + "\n")


def journal_runs(project: Path) -> list[dict[str, Any]]:
    """Every run in the journal, oldest first: its start record updated by its end record."""
    path = project / JOURNAL_FILE
    runs: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a power loss
        runs.setdefault(str(record.get("session")), {}).update(record)
    return list(runs.values())


def last_incomplete_run(project: Path) -> str | None:
    """One line about the last run that stopped without finishing, if the last run did; else None.

    Runs still going (their process alive, no end record) are skipped: they are not over yet.
    """
    for run in reversed(journal_runs(project)):
        status = run.get("status", "running")
        if status == "running" and _pid_alive(int(run.get("pid", -1))) and run.get("host") == os.uname().nodename:
            continue
        if status == "completed":
            return None
        said = f"the last run ({describe_holder(run)}) did not complete: "
        if status == "interrupted":
            said += f"stopped by {run.get('signal')} at {run.get('ended')}"
        elif status == "failed":
            said += f"failed at {run.get('ended')} ({run.get('error')})"
        else:  # no end record and its process is gone: SIGKILL, out of memory, power loss
            said += "its process ended without finishing (killed or crashed; its MLflow runs may still say RUNNING)"
        return said + "; the outputs it had not saved yet are missing or older"
    return None


# ---------------------------------------------------------------------------- clean-up


def _save_dir(dataset: Any) -> Path | None:
    """The ``<filepath>/<save_version>`` folder a versioned local dataset is about to write."""
    from kedro.io import AbstractVersionedDataset

    if not isinstance(dataset, AbstractVersionedDataset) or not getattr(dataset, "_version", None):
        return None
    if getattr(dataset, "_protocol", "file") not in ("file", "local"):
        return None
    try:
        version = dataset.resolve_save_version()
        path = PurePosixPath(dataset._get_versioned_path(version))
    except Exception:  # noqa: BLE001 - a dataset that cannot say is not tracked
        return None
    return Path(str(path)).parent if path.parent.name == version else None


def remove_partial(folders: list[Path]) -> list[str]:
    """Remove each half-written version folder (and its dataset folder when that is left empty)."""
    removed = []
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        parent = folder.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
    return removed


def kill_mlflow_runs(run_ids: list[str], since_ms: int) -> list[str]:
    """End with KILLED every MLflow run still open in this process, and every run under ``run_ids``
    (themselves included) that is RUNNING or was ended by the interruption (after ``since_ms``)."""
    import mlflow
    from mlflow import MlflowClient

    killed = []
    while (active := mlflow.active_run()) is not None:
        killed.append(active.info.run_id)
        mlflow.end_run("KILLED")
    client = MlflowClient()
    todo, seen = list(dict.fromkeys([*run_ids, *killed])), set()
    while todo:
        run_id = todo.pop()
        if run_id in seen:
            continue
        seen.add(run_id)
        info = client.get_run(run_id).info
        ended_by_signal = info.status in ("FAILED", "KILLED") and (info.end_time or 0) >= since_ms
        if info.status == "RUNNING" or ended_by_signal:
            if info.status != "KILLED":
                client.set_terminated(run_id, "KILLED")
            killed.append(run_id)
        children = client.search_runs([info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                      max_results=10_000)
        todo += [c.info.run_id for c in children]
    return list(dict.fromkeys(killed))


# ---------------------------------------------------------------------------- the guard


class RunGuard:
    """One run's lock, journal entries, signal handlers and clean-up (see the module docstring)."""

    def __init__(self, project: Path, run_params: dict[str, Any], catalog: Any):
        self.project = project
        self.catalog = catalog
        nodes = list(run_params.get("node_names") or [])
        self.info = {
            "session": str(run_params.get("run_id") or run_params.get("session_id") or f"{os.getpid()}-{time.time()}"),
            "pid": os.getpid(), "host": os.uname().nodename,
            "pipelines": list(run_params.get("pipeline_names") or ["__default__"]), "nodes": nodes,
            "env": run_params.get("env"), "started": _now(), "status": "running",
        }
        self.coordinated = not is_non_chief_worker()
        self.lock = ProjectLock(project, self.info, shared=bool(nodes))
        self.saving: dict[str, Path] = {}
        self.mlflow_runs: list[str] = []
        self.interrupted: RunInterrupted | None = None
        self.since_ms = 0
        self._previous: dict[int, Any] = {}
        self._finished = False

    # -- start
    def start(self) -> None:
        if not self.coordinated:
            logger.info("non-chief multi-worker worker: no project lock or journal (the chief holds them)")
        else:
            self.lock.acquire()  # raises RunLockedError: nothing started, nothing to undo
            if said := last_incomplete_run(self.project):
                logger.warning("Note: %s.", said)
            journal_write(self.project, self.info)
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        # Registered after mlflow's own (at its import), so it runs before mlflow ends the active run FINISHED.
        atexit.register(self._at_exit)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.interrupted is not None:
            return  # already stopping: a second Ctrl-C must not cut the clean-up short
        self.interrupted = RunInterrupted(signum)
        self.since_ms = int(time.time() * 1000) - 1000  # runs ended from here on were ended by the signal
        raise self.interrupted  # unwinds the run; the clean-up follows (finish_interrupted, at the latest at exit)

    def _at_exit(self) -> None:
        if self.interrupted is not None:
            self.finish_interrupted()
        elif not self._finished:  # e.g. a later before-run hook refused the run: no after-run hook comes
            self._end("failed", error="stopped before the run ended")

    # -- during
    def before_save(self, name: str) -> None:
        try:
            dataset = self.catalog.get(name) if hasattr(self.catalog, "get") else None
        except Exception:  # noqa: BLE001
            return
        if (folder := _save_dir(dataset)) is not None:
            self.saving[name] = folder

    def after_save(self, name: str) -> None:
        self.saving.pop(name, None)

    def seen_mlflow_run(self) -> None:
        import sys

        mlflow = sys.modules.get("mlflow")  # only when kedro-mlflow (or the code) imported it
        if mlflow is not None and (active := mlflow.active_run()) is not None:
            if active.info.run_id not in self.mlflow_runs:
                self.mlflow_runs.append(active.info.run_id)

    # -- end
    def _end(self, status: str, **extra: Any) -> None:
        if self._finished:
            return
        self._finished = True
        atexit.unregister(self._at_exit)
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler)
            except (ValueError, TypeError):
                pass
        if self.coordinated:
            journal_write(self.project, {"session": self.info["session"], "status": status, "ended": _now(), **extra})
            self.lock.release()

    def finish(self) -> None:
        self._end("completed")

    def fail(self, error: BaseException) -> None:
        removed = remove_partial(list(self.saving.values()))
        self.saving.clear()
        if removed:
            logger.warning("run failed: removed half-written outputs %s", ", ".join(removed))
        self._end("failed", error=type(error).__name__)

    def finish_interrupted(self) -> None:
        """Clean up after :class:`RunInterrupted` unwound the run (idempotent; also runs at exit)."""
        if self._finished or self.interrupted is None:
            return
        removed = remove_partial(list(self.saving.values()))
        self.saving.clear()
        killed: list[str] = []
        try:
            import sys

            if "mlflow" in sys.modules:
                killed = kill_mlflow_runs(self.mlflow_runs, self.since_ms)
        except Exception as error:  # noqa: BLE001 - the store may be gone; the journal still says it
            logger.error("run interrupted: could not mark its MLflow runs KILLED (%s)", error)
        logger.error(
            "run interrupted by %s: MLflow runs marked KILLED: %s; half-written outputs removed: %s; exit code %d",
            self.interrupted.signame, ", ".join(killed) or "none", ", ".join(
                str(Path(p).relative_to(self.project)) if Path(p).is_relative_to(self.project) else p
                for p in removed) or "none", self.interrupted.code,
        )
        self._end("interrupted", signal=self.interrupted.signame, mlflow_killed=killed,
                  removed=[str(p) for p in removed])
