"""Project hooks: stop a run before it starts when its inputs have not been made yet, or when
another run holds the project; clean up after a killed run (``runguard``)."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
import re
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline

import osteo_pipeline.pipelines
from osteo_pipeline.datasets import RawFolderDataset

logger = logging.getLogger(__name__)


class MissingInputsError(RuntimeError):
    """A pipeline was asked to run before the pipelines that make its inputs."""


def stage_pipelines() -> dict[str, Pipeline]:
    """Every pipeline under ``osteo_pipeline.pipelines``, by folder name.

    Built here rather than read from ``kedro.framework.project.pipelines``, which only holds
    the pipelines named on the command line.
    """
    found = {}
    for module in pkgutil.iter_modules(osteo_pipeline.pipelines.__path__):
        if not module.ispkg:  # pipelines are folders; declared_models.py is a helper
            continue
        try:
            found[module.name] = importlib.import_module(f"osteo_pipeline.pipelines.{module.name}").create_pipeline()
        except Exception as error:  # noqa: BLE001 - as find_pipelines: a broken stage must not block the others
            logger.warning("pipeline %s could not be built (%s); not checked as a producer", module.name, error)
    return found


def _is_stored(catalog: DataCatalog, name: str) -> bool:
    # Free inputs held only in memory (or unknown to the catalog) cannot be on disk yet.
    return name in catalog and catalog.exists(name)


def missing_inputs(pipeline: Pipeline, catalog: DataCatalog, stages: dict[str, Pipeline]) -> dict[str, list[str]]:
    """Free inputs of ``pipeline`` that are not stored yet, each with the stages that make it.

    Follows the chain upstream, so a missing model input also names the missing manifest
    that ``roi_resize`` would need. Inputs no stage makes (the raw scans) map to ``[]``.
    Whatever ``pipeline`` itself makes counts as there.
    """
    made_here = pipeline.all_outputs()
    missing: dict[str, list[str]] = {}
    todo = [name for name in sorted(pipeline.inputs()) if not name.startswith("params:") and name != "parameters"]
    while todo:
        name = todo.pop(0)
        if name in missing or name in made_here or _is_stored(catalog, name):
            continue
        producers = [stage for stage, p in stages.items() if name in p.all_outputs()]
        missing[name] = producers
        for stage in producers:
            todo += [n for n in sorted(stages[stage].inputs()) if not n.startswith("params:") and n != "parameters"]
    return missing


def _stage_order(stages: dict[str, Pipeline], wanted: set[str]) -> list[str]:
    # A stage comes after every stage that makes one of its inputs.
    order: list[str] = []
    pending = set(wanted)
    while pending:
        ready = sorted(
            s for s in pending
            if not any(stages[s].inputs() & stages[o].all_outputs() for o in pending if o != s)
        ) or sorted(pending)
        order.append(ready[0])
        pending.discard(ready[0])
    return order


def missing_inputs_message(
    missing: dict[str, list[str]], requested: list[str], stages: dict[str, Pipeline], raw: set[str] = frozenset()
) -> str:
    """One readable error: what is missing, which stage makes it, and the command to run.
    ``raw`` names the missing inputs that are raw scan folders (they get set-up advice)."""
    lines = [f"Cannot start `kedro run --pipelines={','.join(requested)}`: inputs not made yet."]
    for name, producers in missing.items():
        made_by = f"made by `{'`, `'.join(producers)}`" if producers else "no pipeline makes it"
        lines.append(f"  - {name}: {made_by}{' (raw scans)' if name in raw else ''}")
    needed = {s for producers in missing.values() for s in producers} | {r for r in requested if r in stages}
    if raw:
        lines.append(
            "Put scans in data/01_raw (class folders or a labels CSV; or generate the embedded "
            "synthetic cohort with `python -m osteo_pipeline.cohort --out data/01_raw`), "
            "or pass --params=raw_dir=<folder>."
        )
    lines.append(f"Run first, or together: kedro run --pipelines={','.join(_stage_order(stages, needed))}")
    return "\n".join(lines)


def _stand_in_for_untrained_baselines(pipeline: Pipeline, catalog: DataCatalog, free: list[str]) -> None:
    """Evaluate reads every declared model, but a run of ``train_cnn21,evaluate`` (or evaluate
    alone) must not wait for baselines nobody trained: their missing entries load as
    ``NotTrained``, and the report lists those models as missing. CNN21's are required."""
    if not any(node.name == "check_models" for node in pipeline.nodes):
        return
    from osteo_pipeline.evaluation.models import NotTrained
    from osteo_pipeline.pipelines.evaluate.pipeline import optional_model_inputs

    for name in sorted(optional_model_inputs().intersection(free)):
        if not _is_stored(catalog, name):
            catalog[name] = NotTrained(name)


class CheckInputsHook:
    """Before a run, name every missing upstream input and the pipeline that makes it.

    Without this a run of ``train_cnn21`` on a fresh clone fails deep inside a node with a
    dataset error; this says ``kedro run --pipelines=ingest,roi_resize,split_augment,train_cnn21``.
    """

    # tryfirst: before the project lock and before kedro-mlflow opens its parent run, so a refused
    # run holds no lock and leaves no MLflow run.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog) -> None:
        free = [n for n in pipeline.inputs() if not n.startswith("params:") and n != "parameters"]
        _stand_in_for_untrained_baselines(pipeline, catalog, free)
        if all(_is_stored(catalog, name) for name in free):
            return  # the usual case: nothing to explain, so the other stages (TensorFlow) are not imported
        stages = stage_pipelines()
        missing = missing_inputs(pipeline, catalog, stages)
        # Raw inputs alone: their dataset's own error (empty folder, expected layout) says more.
        if any(missing.values()):
            requested = run_params.get("pipeline_names") or ["__default__"]
            raw = {n for n in missing if isinstance(catalog.get(n), RawFolderDataset)}
            raise MissingInputsError(missing_inputs_message(missing, list(requested), stages, raw))


class RunGuardHook:
    """The project lock, the run journal and clean-up on SIGTERM / Ctrl-C (see ``runguard``).

    Its ``before_pipeline_run`` runs before kedro-mlflow's (tryfirst), so a run refused for the
    lock opens no MLflow run; ``CheckInputsHook`` (also tryfirst, registered after it) runs first.
    """

    def __init__(self) -> None:
        self._guard: Any = None
        self._streamed: set[str] = set()

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: DataCatalog) -> None:
        from osteo_pipeline.runguard import RunGuard

        project = Path(run_params.get("project_path") or Path.cwd())
        self._guard = RunGuard(project, run_params, catalog)
        self._guard.start()

    @hook_impl(trylast=True)  # after kedro-mlflow has (re)opened its parent run for the node
    def before_node_run(self) -> None:
        if self._guard is not None:
            for name in self._streamed:  # the generator node before this one saved its last chunk
                self._guard.after_save(name)
            self._streamed.clear()
            self._guard.seen_mlflow_run()

    @hook_impl
    def before_dataset_saved(self, dataset_name: str) -> None:
        if self._guard is not None:
            self._guard.before_save(dataset_name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        if self._guard is None:
            return
        if inspect.isgeneratorfunction(node.func):
            # A generator node (roi_resize's crop_and_resize) saves each output once per chunk, all
            # into one version, and Kedro calls after_node_run before those saves: the version is
            # half-written until the next node starts, so it stays tracked till then.
            self._streamed.add(dataset_name)
        else:
            self._guard.after_save(dataset_name)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._streamed.clear()
        if self._guard is not None:
            self._guard.finish()
            self._guard = None

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        self._streamed.clear()
        if self._guard is not None:
            self._guard.fail(error)  # removes the versions still being written, a streamed one included
            self._guard = None


_SAFE_TAG_VALUE = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
NOT_RECORDED = "<not recorded>"


def redact_run_params(values: dict[str, Any]) -> dict[str, Any]:
    """Run-time parameters as they may appear in MLflow: numbers, booleans and short plain tokens
    (``three_class``, ``7``) pass; anything else (a folder path, free text, a nested value) is
    replaced, since a scan folder's path can name a patient or a site."""
    def safe(value: Any) -> bool:
        return isinstance(value, (bool, int, float)) or (isinstance(value, str) and _SAFE_TAG_VALUE.fullmatch(value) is not None)

    return {key: value if safe(value) else NOT_RECORDED for key, value in values.items()}


class RedactRunParamsHook:
    """kedro-mlflow copies the run-time parameters (``--params``) into its run's tags; rewrite them
    through ``redact_run_params`` before any node runs, so a failing first node cannot leave a
    ``raw_dir`` or ``external_dir`` path in a FAILED run."""

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run has opened its run
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        import sys

        mlflow = sys.modules.get("mlflow")  # imported by kedro-mlflow when tracking; never here
        if mlflow is None or mlflow.active_run() is None:
            return
        for key in ("runtime_params", "extra_params"):
            values = run_params.get(key)
            if values:
                mlflow.set_tag(key, str(redact_run_params(dict(values))))
