"""Re-run the study when the raw scans change: ``python -m osteo_pipeline.rerun`` (``make rerun``).

A Kedro pipeline is a static graph, so "train only if the data changed" cannot be a node: the
decision has to come before the run starts, and a run that is not needed must not start at all
(kedro-mlflow opens an MLflow parent run for every ``session.run``, and every versioned dataset
writes a new version). So this module first asks, without writing anything:

1. Does ``ingest``, run now in memory on the raw folder, give the manifest saved last time?
   The manifest keys every scan by the sha256 of its bytes (``scan_id``), and holds its label,
   patient, clinical values and ROI box, so new, removed, replaced or relabelled scans all show.
2. Is every versioned output of the pipelines to re-run at least as new as that manifest? (A run
   that stopped half-way, or a stage never run, leaves older or missing outputs behind.)

3. Does the ROI corrections file in the raw folder (``roi_resize.corrections.file``) give the
   corrected boxes the saved ``roi_table`` was made with? A person fixing boxes is a data change.

Only when one of them says no does it start one ordinary Kedro run of those pipelines (one
``KedroSession``: new catalog versions, old ones kept; one MLflow parent run, tagged afterwards
with the new data fingerprint and scan count). Otherwise it says why nothing is to be done.
Parameter or code changes are not data changes: use ``--force`` (or ``kedro run``) after those.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import pandas as pd
from kedro.framework.cli.project import PARAMS_ARG_HELP
from kedro.framework.cli.utils import ENV_HELP, _split_params, split_string
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import AbstractVersionedDataset, MemoryDataset
from kedro.io.core import VersionNotFoundError
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

log = logging.getLogger(__name__)

MANIFEST = "scan_manifest"
INGEST = "ingest"
FINGERPRINT = "data_fingerprint"
ROI_TABLE = "roi_table"


@dataclass(frozen=True)
class ManifestChange:
    """What differs between two manifests, by ``file_ref`` (never the raw path: it may carry patient ids)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # columns present in only one of the two

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.columns)

    def describe(self) -> str:
        parts = []
        for what, files in (("new", self.added), ("removed", self.removed), ("changed", self.changed)):
            if files:
                shown = ", ".join(files[:5]) + (f", ... ({len(files) - 5} more)" if len(files) > 5 else "")
                parts.append(f"{len(files)} {what} scan{'s' if len(files) != 1 else ''} ({shown})")
        if self.columns:
            parts.append(f"manifest columns differ ({', '.join(self.columns)})")
        return "; ".join(parts) or "no change"


@dataclass(frozen=True)
class RerunPlan:
    """Whether the pipelines must run again, and why."""

    needed: bool
    reason: str
    n_scans: int
    change: ManifestChange = field(default_factory=ManifestChange)
    stale: tuple[str, ...] = ()
    manifest_version: str | None = None
    last_run: str | None = None  # the last run did not complete, or a run holds the project now (runguard)


def with_run_state(plan: RerunPlan, project_path: Path) -> RerunPlan:
    """``plan`` with what the run journal and the project lock say (``runguard``): a run in progress
    now, or a last run that did not complete (which makes a re-run needed)."""
    from osteo_pipeline.runguard import describe_holder, last_incomplete_run, running_now

    if running := running_now(project_path):
        return replace(plan, last_run="a run is in progress now: " + "; ".join(describe_holder(r) for r in running))
    if (incomplete := last_incomplete_run(project_path)) is None:
        return plan
    if not plan.needed:
        plan = replace(plan, needed=True, reason=f"{incomplete}; run it again ({plan.reason.split(';')[0]})")
    return replace(plan, last_run=incomplete)


@dataclass(frozen=True)
class RerunResult:
    """What ``rerun`` did: the plan, whether it ran, the session (= save version) and its time."""

    plan: RerunPlan
    ran: bool
    session_id: str
    seconds: float
    pipelines: tuple[str, ...]
    mlflow_run_id: str | None = None


# ---------------------------------------------------------------------------- comparison


def _as_saved(manifest: pd.DataFrame) -> pd.DataFrame:
    # Through the same Parquet writer/reader as the catalog's dataset, so dtypes match the saved copy.
    return pd.read_parquet(io.BytesIO(manifest.to_parquet()))


def _refs(manifest: pd.DataFrame, scan_ids: Iterable[str]) -> tuple[str, ...]:
    """The scans' file_refs; a manifest saved before file_ref existed has raw paths only: its scan ids."""
    scan_ids = list(scan_ids)
    if "file_ref" in manifest.columns:
        return tuple(sorted(manifest.loc[scan_ids, "file_ref"]))
    return tuple(sorted(f"scan {s[:12]}" for s in scan_ids))


def compare_manifests(previous: pd.DataFrame | None, current: pd.DataFrame) -> ManifestChange:
    """Scans added, removed or changed (any manifest value) between two manifests, by ``scan_id``."""
    current = _as_saved(current).set_index("scan_id")
    if previous is None:
        return ManifestChange(added=_refs(current, current.index))
    previous = previous.set_index("scan_id")
    added = current.index.difference(previous.index)
    removed = previous.index.difference(current.index)
    common = current.index.intersection(previous.index)
    columns = tuple(sorted(set(current.columns) ^ set(previous.columns)))
    shared = sorted(set(current.columns) & set(previous.columns))
    now, before = current.loc[common, shared], previous.loc[common, shared]
    # Equal, or missing on both sides (NaN != NaN; a comparison with pd.NA is NA, i.e. not equal).
    same = (now == before).fillna(False).to_numpy(dtype=bool) | (now.isna() & before.isna()).to_numpy(dtype=bool)
    differs = ~same.all(axis=1)
    return ManifestChange(
        added=_refs(current, added),
        removed=_refs(previous, removed),
        changed=_refs(current, common[differs]),
        columns=columns,
    )


def latest_version(catalog: Any, name: str) -> str | None:
    """Newest saved version of a versioned dataset; ``None`` when it is not versioned.

    Raises:
        VersionNotFoundError: a versioned dataset with no saved version.
    """
    dataset = catalog.get(name)
    if not isinstance(dataset, AbstractVersionedDataset):
        return None
    return dataset.resolve_load_version()  # None when versioning is off for this dataset


def stale_outputs(catalog: Any, pipeline: Pipeline, since: str, made_from_manifest: set[str]) -> list[str]:
    """Versioned outputs of ``pipeline`` that are missing, or made from the manifest and older than it
    (version ``since``).

    Kedro versions are run timestamps that sort as text, so an output computed from the manifest
    but older than it was computed from an older manifest. Outputs that do not depend on the scans
    (e.g. the augmentation policy, which an Airflow task may write before ingest's task) only have
    to exist; unversioned ones (in memory, MLflow-only, overwritten reports) cannot tell and are skipped.
    """
    stale = []
    for name in sorted(pipeline.all_outputs()):
        try:
            version = latest_version(catalog, name)
        except VersionNotFoundError:
            stale.append(name)
            continue
        if version is not None and name in made_from_manifest and version < since:
            stale.append(name)
    return stale


def made_from(dataset: str) -> set[str]:
    """Every dataset computed, directly or through other stages, from ``dataset``."""
    from osteo_pipeline.hooks import stage_pipelines  # every stage, whatever the run selected

    project = sum(stage_pipelines().values(), Pipeline([]))
    return set(project.from_inputs(dataset).all_outputs())


def compare_roi_corrections(saved_roi_table: pd.DataFrame | None, corrections: dict[str, tuple[int, ...]]) -> str:
    """What differs between the corrected boxes a saved ``roi_table`` used (``roi_source`` ``corrected``)
    and those of the corrections file now, by ``file_ref``; empty when nothing does."""
    applied: dict[str, tuple[int, ...]] = {}
    if saved_roi_table is not None and "roi_source" in saved_roi_table.columns:
        used = saved_roi_table[saved_roi_table["roi_source"] == "corrected"]
        applied = {r.file_ref: (int(r.x0), int(r.y0), int(r.x1), int(r.y1)) for r in used.itertuples(index=False)}
    new = sorted(ref for ref in corrections if ref not in applied)
    changed = sorted(ref for ref in corrections if ref in applied and applied[ref] != tuple(corrections[ref]))
    removed = sorted(ref for ref in applied if ref not in corrections)
    parts = [f"{len(refs)} {what} ({', '.join(refs[:5])}{', ...' if len(refs) > 5 else ''})"
             for what, refs in (("new", new), ("changed", changed), ("withdrawn", removed)) if refs]
    return "; ".join(parts)


def roi_corrections_change(catalog: Any, params: dict[str, Any], manifest: pd.DataFrame) -> str:
    """``compare_roi_corrections`` for the raw folder's corrections file and the saved ``roi_table``."""
    from osteo_pipeline.pipelines.roi_resize.nodes import RoiCorrectionError, read_roi_corrections

    settings = (params.get("roi_resize") or {}).get("corrections") or {}
    name = settings.get("file")
    if not name or ROI_TABLE not in catalog or not catalog.exists(ROI_TABLE):
        return ""  # no corrections configured, or roi_resize never ran (its versioned outputs are missing)
    raw = catalog.load("raw_scans")
    data = raw[name]() if name in raw else None
    try:
        corrections = read_roi_corrections(data, name, manifest, settings.get("on_invalid", "error"))
    except RoiCorrectionError as error:
        # Not "nothing to do": the run stops on these rows and says which, as `kedro run` would.
        return f"ROI corrections in {name} changed, with invalid rows: {error}"
    change = compare_roi_corrections(catalog.load(ROI_TABLE), corrections)
    return f"ROI corrections in {name} changed: {change}" if change else ""


# ---------------------------------------------------------------------------- planning


def ingest_in_memory(catalog: Any, ingest: Pipeline) -> pd.DataFrame:
    """Run ``ingest`` on the raw folder with its outputs kept in memory: the manifest it would save."""
    for name in ingest.all_outputs():
        catalog[name] = MemoryDataset()
    # No hook manager: no before-run check, no MLflow run, nothing saved.
    SequentialRunner().run(ingest, catalog)
    return catalog.load(MANIFEST)


def plan_rerun(context: Any, pipeline: Pipeline, ingest: Pipeline) -> RerunPlan:
    """Decide whether ``pipeline`` must run again (see the module docstring); writes nothing."""
    catalog = context.catalog
    try:
        manifest_version = latest_version(catalog, MANIFEST)
        if manifest_version is None:
            raise ValueError(f"rerun compares against the last saved `{MANIFEST}`, so it must be a versioned "
                             "dataset: set `versioned: true` for it in conf/base/catalog_ingest.yml")
    except VersionNotFoundError:
        manifest_version = None
    previous = catalog.load(MANIFEST) if manifest_version else None
    stale = stale_outputs(catalog, pipeline, manifest_version, made_from(MANIFEST)) if manifest_version else []

    current = ingest_in_memory(context.catalog, ingest)  # a fresh catalog: its outputs go to memory
    change = compare_manifests(previous, current)
    n_scans = len(current)
    if previous is None:
        return RerunPlan(True, f"no manifest saved yet: first run on {n_scans} scans", n_scans, change)
    if change:
        return RerunPlan(True, f"raw scans changed since {manifest_version}: {change.describe()}", n_scans, change,
                         tuple(stale), manifest_version)
    if ROI_TABLE in pipeline.all_outputs() and (corrected := roi_corrections_change(catalog, context.params, current)):
        return RerunPlan(True, corrected, n_scans, change, tuple(stale), manifest_version)
    if stale:
        return RerunPlan(True, f"no new scans, but outputs are missing or older than the manifest "
                               f"{manifest_version} (an earlier run stopped or skipped them): {', '.join(stale)}",
                         n_scans, change, tuple(stale), manifest_version)
    return RerunPlan(False, f"no new or changed scans: {n_scans} scans, as in the manifest {manifest_version}, "
                            "and every output is up to date; nothing to do", n_scans, change, (), manifest_version)


def _selected_pipeline(names: Sequence[str]) -> tuple[Pipeline, Pipeline]:
    from kedro.framework.project import pipelines

    pipelines.set_requested([*names, INGEST])  # as session.run does, before the registry loads
    missing = [n for n in [*names, INGEST] if n not in pipelines]
    if missing:
        raise ValueError(f"rerun: no registered pipeline named {', '.join(missing)} "
                         f"(registered: {', '.join(sorted(pipelines))})")
    return sum((pipelines[n] for n in names), Pipeline([])), pipelines[INGEST]


def default_pipelines(context: Any) -> list[str]:
    """The pipelines a re-run runs: ``rerun.pipelines`` in conf (parameters_rerun.yml)."""
    names = (context.params.get("rerun") or {}).get("pipelines") or ["__default__"]
    return [str(n) for n in names]


@contextmanager
def _planned(
    project_path: Path, env: str | None, pipelines: Iterable[str] | None, runtime_params: dict[str, Any] | None,
) -> Iterator[tuple[KedroSession, Any, tuple[str, ...], RerunPlan]]:
    """A session on the project, its context, the pipelines to re-run and the plan (nothing run yet)."""
    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path, env=env, runtime_params=runtime_params or {}) as session:
        context = session.load_context()
        names = tuple(pipelines or default_pipelines(context))
        pipeline, ingest = _selected_pipeline(names)
        yield session, context, names, with_run_state(plan_rerun(context, pipeline, ingest), project_path)


def plan_for_project(
    project_path: str | Path, env: str | None = None, pipelines: Iterable[str] | None = None,
    runtime_params: dict[str, Any] | None = None,
) -> RerunPlan:
    """``plan_rerun`` for a project folder (what the Airflow DAG's first task asks); writes nothing."""
    with _planned(Path(project_path).resolve(), env, pipelines, runtime_params) as (*_, plan):
        return plan


# ---------------------------------------------------------------------------- running


def _tag_parent_run(session_id: str, tags: dict[str, str]) -> str | None:
    """Put ``tags`` on the MLflow parent run that kedro-mlflow opened for session ``session_id``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        # kedro-mlflow tags its parent run with the run's parameters, among them the session id as `run_id`.
        runs = mlflow.search_runs(filter_string=f"tags.run_id = '{session_id}'", search_all_experiments=True,
                                  output_format="list")
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        if not parents:
            log.info("rerun: no MLflow parent run for session %s (tracking off for these pipelines?)", session_id)
            return None
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_tag(parents[0].info.run_id, key, value)
    except MlflowException as error:  # the run itself is complete and saved: say so, do not fail it
        log.warning("rerun: the run finished, but its MLflow parent run could not be tagged: %s", error)
        return None
    return parents[0].info.run_id


def rerun(
    project_path: str | Path, env: str | None = None, pipelines: Iterable[str] | None = None,
    runtime_params: dict[str, Any] | None = None, force: bool = False, dry_run: bool = False,
) -> RerunResult:
    """Re-ingest the raw folder; run ``pipelines`` (conf ``rerun.pipelines``) only if the data changed.

    Call it from the project folder (relative catalog paths and ``mlflow.db`` resolve against the
    working directory, as for ``kedro run``).
    """
    import mlflow

    start = time.perf_counter()
    with _planned(Path(project_path).resolve(), env, pipelines, runtime_params) as (session, context, names, plan):
        if force and not plan.needed:
            plan = replace(plan, needed=True, reason=f"--force: {plan.reason}")
        log.info("rerun: %s", plan.reason)
        if not plan.needed or dry_run:
            return RerunResult(plan, False, session.session_id, time.perf_counter() - start, names)
        log.info("rerun: running %s (session %s)", ", ".join(names), session.session_id)
        session.run(pipeline_names=list(names))
        run_id = None
        catalog = context.catalog  # a fresh catalog: it loads the versions this run saved
        if FINGERPRINT in catalog and catalog.exists(FINGERPRINT):
            from osteo_pipeline.training.tracking import fingerprint_tags

            tags = {**fingerprint_tags(catalog.load(FINGERPRINT)), "rerun.reason": plan.reason[:4000]}
            run_id = _tag_parent_run(session.session_id, tags)
    # kedro-mlflow may leave its parent run active in this process; `kedro run` would exit here.
    while mlflow.active_run():
        mlflow.end_run()
    return RerunResult(plan, True, session.session_id, time.perf_counter() - start, names, run_id)


@click.command(name="rerun", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env", "-e", default=None, help=ENV_HELP)
@click.option("--pipelines", "-p", default="", callback=split_string,
              help="Pipelines to re-run when the data changed (default: rerun.pipelines in conf, "
                   "i.e. __default__). Comma-separated, as for `kedro run`.")
@click.option("--params", type=click.UNPROCESSED, default="", callback=_split_params, help=PARAMS_ARG_HELP)
@click.option("--force", is_flag=True, help="Run even when no scan changed (after changing parameters or code).")
@click.option("--dry-run", is_flag=True, help="Only say whether a re-run is needed and why.")
def main(env: str | None, pipelines: list[str], params: dict[str, Any], force: bool, dry_run: bool) -> None:
    """Re-ingest the raw scans and, only if they changed, re-run the pipelines (train + evaluate).

    Run from the project folder, like `kedro run`. Exits 0 when there is nothing to do.
    """
    result = rerun(Path.cwd(), env=env, pipelines=pipelines or None, runtime_params=params, force=force,
                   dry_run=dry_run)
    if result.plan.last_run:
        click.echo(f"rerun: note: {result.plan.last_run}")
    if result.ran:
        click.echo(f"rerun: ran {', '.join(result.pipelines)} in {result.seconds:.0f} s because {result.plan.reason}")
    elif result.plan.needed:
        click.echo(f"rerun (dry run): would run {', '.join(result.pipelines)}: {result.plan.reason}")
    else:
        click.echo(f"rerun: {result.plan.reason} ({result.seconds:.1f} s)")


if __name__ == "__main__":
    main()
