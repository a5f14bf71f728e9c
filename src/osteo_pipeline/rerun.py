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

Check 1 without decoding: once a check (or a re-run) has shown that the raw folder gives the saved
manifest, it records the raw-folder state (``rerun_raw_state`` in the catalog,
conf/base/catalog_rerun.yml): the manifest version, a digest of what else ingest reads (its
parameters, the pseudonym key, its code), a digest of every file's relative path, size and
modification/change times, and a digest of every file's relative path and SHA-256. Whole-folder
digests and counts only: raw names may carry patient ids. The next check, when that state belongs
to the latest manifest and ingest's settings are the same, lists the folder: same sizes and times
(a ``stat`` per file, no file read), or else the same bytes (every file hashed, none decoded),
means the same manifest. Only then does it skip the in-memory ingest, and it answers without a
``KedroSession`` (the project's hooks, not kedro-mlflow's: no MLflow, no TensorFlow). Checks 2 and 3
run as before. Anything else (no state, another manifest, other settings, other bytes) takes the
full check above, which records the state again when the manifest still matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import pandas as pd
from kedro.framework.cli.project import PARAMS_ARG_HELP
from kedro.framework.cli.utils import ENV_HELP, _split_params, split_string
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import AbstractVersionedDataset, MemoryDataset
from kedro.io.core import VersionNotFoundError, generate_timestamp, get_protocol_and_path
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

log = logging.getLogger(__name__)

MANIFEST = "scan_manifest"
INGEST = "ingest"
FINGERPRINT = "data_fingerprint"
ROI_TABLE = "roi_table"
RAW = "raw_scans"
STATE = "rerun_raw_state"


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
    # How the raw folder was compared with the manifest: "ingest" (run in memory), or, from the
    # recorded raw-folder state, "stat" (same sizes and times) or "content" (same bytes).
    raw_check: str = "ingest"


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
    """What ``rerun`` did: the plan, whether it ran, the session (= save version; a timestamp when the
    raw-folder state answered without a session) and its time."""

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


def _declared_config(catalog: Any, name: str, made: bool = False) -> dict[str, Any] | None:
    """The catalog's configuration of ``name`` (an entry or a dataset factory), while the dataset is not
    made yet unless ``made``; ``None`` for a dataset given as an object, or a catalog without configurations."""
    resolver = getattr(catalog, "config_resolver", None)
    if resolver is None or (not made and name in getattr(catalog, "_datasets", {})):
        return None
    if name not in resolver.config and not resolver.match_dataset_pattern(name):
        return None
    config = resolver.resolve_pattern(name)
    return config if isinstance(config, dict) else None


def _local_file(config: dict[str, Any] | None) -> Path | None:
    """The local file of a dataset configuration with a ``filepath``, else ``None``."""
    filepath = (config or {}).get("filepath")
    if not isinstance(filepath, str):
        return None
    protocol, path = get_protocol_and_path(filepath)
    return Path(path) if protocol == "file" else None


def _latest_on_disk(filepath: Path) -> str:
    """Kedro's latest load version of a versioned local file (``<filepath>/<version>/<name>``): the
    newest version folder that holds the file."""
    try:
        names = sorted((p.name for p in filepath.iterdir() if not p.name.startswith(".")), reverse=True)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for version in names:
        if (filepath / version / filepath.name).exists():
            return version
    raise VersionNotFoundError(f"Did not find any versions for {filepath}")


def latest_version(catalog: Any, name: str) -> str | None:
    """Newest saved version of a versioned dataset; ``None`` when it is not versioned.

    A dataset declared in the catalog is not made for this: an entry without ``versioned: true`` is
    not versioned, and a versioned local file is looked up on disk as Kedro would. Making it would
    import its class: a Keras model's imports TensorFlow, an MLflow dataset's MLflow (seconds each),
    which a re-run with nothing new never needs.

    Raises:
        VersionNotFoundError: a versioned dataset with no saved version.
    """
    config = _declared_config(catalog, name)
    if config is not None and not config.get("versioned"):
        return None
    if config is not None and (filepath := _local_file(config)) is not None:
        return _latest_on_disk(filepath)
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


# ---------------------------------------------------------------------------- raw-folder state

STATE_FORMAT = 1
HASH_WORKERS = min(16, 2 * (os.cpu_count() or 1))


def _sha256(items: Iterable[Any]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, default=repr).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class RawFolderState:
    """What the raw folder was when it gave the manifest ``manifest_version``: whole-folder digests
    and counts only, never a file or folder name (raw names may carry patient ids)."""

    manifest_version: str
    settings_sha256: str  # ingest's parameters, its other inputs (the pseudonym key) and its code
    stat_sha256: str  # every file's relative path, size, mtime and ctime (ns)
    content_sha256: str  # every file's relative path and the SHA-256 of its bytes
    n_files: int
    n_scans: int
    format: int = STATE_FORMAT

    @classmethod
    def parse(cls, data: Any) -> RawFolderState | None:
        try:
            state = cls(**data)
        except TypeError:
            return None
        return state if state.format == STATE_FORMAT else None


@dataclass(frozen=True)
class RawListing:
    """Every entry ingest sees under the raw folder (``RawFolderDataset``'s walk: symlinks followed,
    problems such as unreadable folders or broken links listed with their code)."""

    root: Path
    files: dict[str, str]  # relative id -> path
    problems: dict[str, str]  # relative id -> problem code

    @classmethod
    def of(cls, root: Path) -> RawListing:
        from osteo_pipeline.datasets.raw_folder import walk

        files, problems = walk(str(root))
        return cls(root, files, {rel: code for rel, (_, code) in problems.items()})

    def _problems(self) -> list[list[str]]:
        return [[rel, "!", code] for rel, code in sorted(self.problems.items())]

    def stat_sha256(self) -> str:
        """Relative paths, sizes and modification/change times (ctime: a rewrite that restores the
        mtime still shows); no file is opened."""
        def entry(rel: str) -> list[Any]:
            try:
                st = os.stat(self.files[rel])
            except OSError as err:
                return [rel, "!", err.errno]
            return [rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

        return _sha256([*map(entry, sorted(self.files)), *self._problems()])

    def content_sha256(self) -> str:
        """Relative paths and the SHA-256 of every file's bytes (read in parallel, nothing decoded).

        Raises:
            OSError: a file cannot be read (the full check reports it as ingest does).
        """
        def file_sha256(rel: str) -> str:
            with open(self.files[rel], "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()

        names = sorted(self.files)
        with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
            hashes = list(pool.map(file_sha256, names))
        return _sha256([*map(list, zip(names, hashes, strict=True)), *self._problems()])


def _raw_root(catalog: Any) -> Path | None:
    """The local raw folder ingest reads (``raw_scans``); ``None`` when it is remote or not a raw folder."""
    from osteo_pipeline.datasets import RawFolderDataset

    dataset = catalog.get(RAW) if RAW in catalog else None
    local = dataset.local_root() if isinstance(dataset, RawFolderDataset) else None
    if local is None:
        return None
    root = Path(local)
    return root if root.is_dir() else None


def _state_file(catalog: Any, root: Path) -> Path | None:
    """The state's local file; ``None`` (no state kept) when it is not declared, not a local file,
    or inside the raw folder (raw data is never written, and the state would change the folder)."""
    if STATE not in catalog:
        return None
    path = _local_file(_declared_config(catalog, STATE, made=True))  # kedro-mlflow makes every dataset
    if path is None:
        return None
    if path.resolve().is_relative_to(root.resolve()):
        log.warning("rerun: %s is inside the raw folder; no raw-folder state is kept (move it)", STATE)
        return None
    return path


def ingest_settings_sha256(catalog: Any, ingest: Pipeline) -> str:
    """A digest of what, besides the raw folder, makes ingest's manifest: every other input of the
    pipeline (``params:`` entries, the pseudonym key) and the source of its nodes' packages."""
    inputs = [[name, catalog.load(name)] for name in sorted(ingest.inputs()) if name != RAW]
    folders = set()
    for node in ingest.nodes:
        module = sys.modules.get(getattr(node.func, "__module__", None) or "")
        if getattr(module, "__file__", None):
            folders.add(Path(module.__file__).parent)
    code = [[folder.name, path.name, hashlib.sha256(path.read_bytes()).hexdigest()]
            for folder in sorted(folders) for path in sorted(folder.glob("*.py"))]
    return _sha256([*inputs, ["code", code]])


def load_state(catalog: Any) -> RawFolderState | None:
    """The recorded raw-folder state; ``None`` when none is declared, saved or readable."""
    if STATE not in catalog:
        return None
    try:
        return RawFolderState.parse(catalog.load(STATE))
    except Exception as error:  # noqa: BLE001 - a missing or broken cache only means the full check
        log.debug("rerun: no usable raw-folder state (%s)", type(error).__name__)
        return None


def save_state(state: RawFolderState, path: Path) -> None:
    """Write ``state`` to ``path`` (the catalog's file for it) atomically: a temporary file, then a
    rename, so a reader never sees half of it. A failure only costs the next check its fast path."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(asdict(state), indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        log.warning("rerun: the raw-folder state could not be saved (%s); the next check reads every scan",
                    error.strerror or error)
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class RawCheck:
    """The raw folder and ingest's settings as they were before a full check or a run: what
    ``record`` saves once the manifest is known to match them."""

    listing: RawListing
    path: Path
    settings_sha256: str
    stat_sha256: str

    @classmethod
    def begin(cls, catalog: Any, ingest: Pipeline) -> RawCheck | None:
        root = _raw_root(catalog)
        path = _state_file(catalog, root) if root is not None else None
        if path is None:
            return None
        listing = RawListing.of(root)
        return cls(listing, path, ingest_settings_sha256(catalog, ingest), listing.stat_sha256())

    def recorded_in(self, state: RawFolderState | None, manifest_version: str) -> bool:
        """Whether ``state`` already says this (same manifest, settings, sizes and times)."""
        return state is not None and (state.manifest_version, state.settings_sha256, state.stat_sha256) == (
            manifest_version, self.settings_sha256, self.stat_sha256)

    def record(self, manifest_version: str, n_scans: int, content_sha256: str | None = None) -> RawFolderState | None:
        """Save the state for ``manifest_version``, unless a file changed since ``begin`` (then the
        manifest may not be that of the bytes hashed now, and the next check is a full one)."""
        try:
            content = content_sha256 or self.listing.content_sha256()
        except OSError:
            return None
        listing = RawListing.of(self.listing.root)
        if listing.stat_sha256() != self.stat_sha256:
            log.info("rerun: the raw folder changed during the check; its state is not recorded")
            return None
        state = RawFolderState(manifest_version, self.settings_sha256, self.stat_sha256, content,
                               len(listing.files), int(n_scans))
        save_state(state, self.path)
        return state


def unchanged_raw_folder(catalog: Any, ingest: Pipeline, manifest_version: str | None) -> tuple[str, RawFolderState] | None:
    """``("stat" | "content", state)`` when the recorded state shows that the raw folder still gives
    the manifest ``manifest_version``; ``None`` when only the full check can tell. Reads no file
    when sizes and times are the same, decodes none in any case."""
    state = load_state(catalog)
    if state is None or manifest_version is None or state.manifest_version != manifest_version:
        return None
    check = RawCheck.begin(catalog, ingest)
    if check is None or check.settings_sha256 != state.settings_sha256:
        return None
    if check.stat_sha256 == state.stat_sha256:
        return "stat", state
    try:
        content = check.listing.content_sha256()
    except OSError:
        return None
    if content != state.content_sha256:
        return None
    # Same bytes (touched, copied, restored): record the new times, so the next check is a stat again.
    return "content", check.record(manifest_version, state.n_scans, content) or state


# ---------------------------------------------------------------------------- planning


def ingest_in_memory(catalog: Any, ingest: Pipeline) -> pd.DataFrame:
    """Run ``ingest`` on the raw folder with its outputs kept in memory: the manifest it would save."""
    for name in ingest.all_outputs():
        catalog[name] = MemoryDataset()
    # No hook manager: no before-run check, no MLflow run, nothing saved.
    SequentialRunner().run(ingest, catalog)
    return catalog.load(MANIFEST)


def _manifest_version(catalog: Any) -> str | None:
    """The latest saved manifest version; ``None`` when none is saved yet."""
    try:
        manifest_version = latest_version(catalog, MANIFEST)
    except VersionNotFoundError:
        return None
    if manifest_version is None:
        raise ValueError(f"rerun compares against the last saved `{MANIFEST}`, so it must be a versioned "
                         "dataset: set `versioned: true` for it in conf/base/catalog_ingest.yml")
    return manifest_version


RAW_CHECKS = {"ingest": "", "stat": " (raw folder unchanged: same file sizes and times)",
              "content": " (raw folder unchanged: same file contents)"}


def _decide(context: Any, catalog: Any, pipeline: Pipeline, manifest: Any, n_scans: int, change: ManifestChange,
            stale: list[str], manifest_version: str, raw_check: str) -> RerunPlan:
    """The plan once the manifest comparison is known (``manifest``: that of the raw folder now, or a
    callable that loads it, for the ROI corrections check)."""
    if change:
        return RerunPlan(True, f"raw scans changed since {manifest_version}: {change.describe()}", n_scans, change,
                         tuple(stale), manifest_version, raw_check=raw_check)
    if ROI_TABLE in pipeline.all_outputs() and (
            corrected := roi_corrections_change(catalog, context.params, manifest() if callable(manifest) else manifest)):
        return RerunPlan(True, corrected, n_scans, change, tuple(stale), manifest_version, raw_check=raw_check)
    if stale:
        return RerunPlan(True, f"no new scans{RAW_CHECKS[raw_check]}, but outputs are missing or older than the manifest "
                               f"{manifest_version} (an earlier run stopped or skipped them): {', '.join(stale)}",
                         n_scans, change, tuple(stale), manifest_version, raw_check=raw_check)
    return RerunPlan(False, f"no new or changed scans: {n_scans} scans, as in the manifest {manifest_version}"
                            f"{RAW_CHECKS[raw_check]}, and every output is up to date; nothing to do",
                     n_scans, change, (), manifest_version, raw_check=raw_check)


def _begin_raw_check(catalog: Any, ingest: Pipeline) -> RawCheck | None:
    """``RawCheck.begin``; a failure (an unreadable folder, a broken key file) only loses the fast path:
    the full check, or the run, reports it as ingest does."""
    try:
        return RawCheck.begin(catalog, ingest)
    except Exception as error:  # noqa: BLE001
        log.warning("rerun: the raw-folder state cannot be checked (%s: %s); reading every scan",
                    type(error).__name__, error)
        return None


def plan_rerun(context: Any, pipeline: Pipeline, ingest: Pipeline) -> RerunPlan:
    """Decide whether ``pipeline`` must run again, running ``ingest`` in memory (see the module
    docstring). Writes nothing but the raw-folder state, when the raw folder gives the saved manifest."""
    catalog = context.catalog
    manifest_version = _manifest_version(catalog)
    previous = catalog.load(MANIFEST) if manifest_version else None
    stale = stale_outputs(catalog, pipeline, manifest_version, made_from(MANIFEST)) if manifest_version else []
    raw = _begin_raw_check(catalog, ingest) if manifest_version else None  # before ingest reads the folder

    current = ingest_in_memory(context.catalog, ingest)  # a fresh catalog: its outputs go to memory
    change = compare_manifests(previous, current)
    n_scans = len(current)
    if previous is None:
        return RerunPlan(True, f"no manifest saved yet: first run on {n_scans} scans", n_scans, change)
    if not change and raw is not None and not raw.recorded_in(load_state(catalog), manifest_version):
        raw.record(manifest_version, n_scans)  # the next check with nothing new reads no scan
    return _decide(context, catalog, pipeline, current, n_scans, change, stale, manifest_version, "ingest")


def plan_from_state(context: Any, pipeline: Pipeline, ingest: Pipeline) -> RerunPlan | None:
    """The plan when the recorded raw-folder state shows the raw folder still gives the latest saved
    manifest (checks 2 and 3 as in ``plan_rerun``); ``None`` when only ``plan_rerun`` can tell.
    Decodes no scan; reads none when the files' sizes and times are unchanged."""
    catalog = context.catalog
    manifest_version = _manifest_version(catalog)
    try:
        unchanged = unchanged_raw_folder(catalog, ingest, manifest_version)
    except Exception as error:  # noqa: BLE001 - as _begin_raw_check
        log.warning("rerun: the raw-folder state cannot be checked (%s: %s); reading every scan",
                    type(error).__name__, error)
        return None
    if unchanged is None:
        return None
    raw_check, state = unchanged
    stale = stale_outputs(catalog, pipeline, manifest_version, made_from(MANIFEST))
    return _decide(context, catalog, pipeline, lambda: catalog.load(MANIFEST), state.n_scans, ManifestChange(),
                   stale, manifest_version, raw_check)


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


def _bare_context(project_path: Path, env: str | None, runtime_params: dict[str, Any] | None) -> Any:
    """The project's context as ``KedroSession.load_context`` makes it, with the project's hooks but
    not the plugins' (kedro-mlflow's import MLflow, and its catalog hook makes every dataset, which
    imports TensorFlow for the Keras models): to read the catalog and parameters, not to run."""
    from kedro.framework.hooks import _create_hook_manager
    from kedro.framework.hooks.manager import _register_hooks
    from kedro.framework.project import PACKAGE_NAME, settings, validate_settings

    validate_settings()
    env = env or os.getenv("KEDRO_ENV") or None
    runtime_params = runtime_params or None
    hook_manager = _create_hook_manager()
    _register_hooks(hook_manager, settings.HOOKS)
    config_loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project_path / settings.CONF_SOURCE), env=env,
                                                 runtime_params=runtime_params, **settings.CONFIG_LOADER_ARGS)
    context = settings.CONTEXT_CLASS(package_name=PACKAGE_NAME, project_path=project_path, config_loader=config_loader,
                                     env=env, runtime_params=runtime_params, hook_manager=hook_manager)
    hook_manager.hook.after_context_created(context=context)
    return context


def _quick_plan(
    project_path: Path, env: str | None, pipelines: Iterable[str] | None, runtime_params: dict[str, Any] | None,
) -> tuple[tuple[str, ...], RerunPlan | None]:
    """The pipelines to re-run and ``plan_from_state``'s plan (with the run state), without a
    ``KedroSession``; the plan is ``None`` when only the full check can tell."""
    context = _bare_context(project_path, env, runtime_params)
    names = tuple(pipelines or default_pipelines(context))
    pipeline, ingest = _selected_pipeline(names)
    plan = plan_from_state(context, pipeline, ingest)
    return names, with_run_state(plan, project_path) if plan is not None else None


@contextmanager
def _planned(
    project_path: Path, env: str | None, pipelines: Iterable[str] | None, runtime_params: dict[str, Any] | None,
) -> Iterator[tuple[KedroSession, Any, tuple[str, ...], Pipeline, RerunPlan]]:
    """A session on the (bootstrapped) project, its context, the pipelines to re-run, ingest and the
    full check's plan (nothing run yet)."""
    with KedroSession.create(project_path=project_path, env=env, runtime_params=runtime_params or {}) as session:
        context = session.load_context()
        names = tuple(pipelines or default_pipelines(context))
        pipeline, ingest = _selected_pipeline(names)
        yield session, context, names, ingest, with_run_state(plan_rerun(context, pipeline, ingest), project_path)


def plan_for_project(
    project_path: str | Path, env: str | None = None, pipelines: Iterable[str] | None = None,
    runtime_params: dict[str, Any] | None = None,
) -> RerunPlan:
    """Whether a re-run is needed and why, for a project folder (what the Airflow DAG's first task
    asks): from the raw-folder state when it tells, else ``plan_rerun``. Writes nothing but that state."""
    project_path = Path(project_path).resolve()
    bootstrap_project(project_path)
    _, plan = _quick_plan(project_path, env, pipelines, runtime_params)
    if plan is not None:
        return plan
    with _planned(project_path, env, pipelines, runtime_params) as (*_, plan):
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
    """Re-ingest the raw folder (or find it unchanged by its recorded state); run ``pipelines`` (conf
    ``rerun.pipelines``) only if the data changed. A run that saves a manifest records the state.

    Call it from the project folder (relative catalog paths and ``mlflow.db`` resolve against the
    working directory, as for ``kedro run``).
    """
    start = time.perf_counter()
    project_path = Path(project_path).resolve()
    bootstrap_project(project_path)
    if not force:
        # Nothing new by the raw-folder state: answered without a session (no MLflow, no TensorFlow).
        names, plan = _quick_plan(project_path, env, pipelines, runtime_params)
        if plan is not None and (not plan.needed or dry_run):
            log.info("rerun: %s", plan.reason)
            return RerunResult(plan, False, generate_timestamp(), time.perf_counter() - start, names)

    import mlflow

    with _planned(project_path, env, pipelines, runtime_params) as (session, context, names, ingest, plan):
        if force and not plan.needed:
            plan = replace(plan, needed=True, reason=f"--force: {plan.reason}")
        log.info("rerun: %s", plan.reason)
        if not plan.needed or dry_run:
            return RerunResult(plan, False, session.session_id, time.perf_counter() - start, names)
        raw = _begin_raw_check(context.catalog, ingest)  # the raw folder before the run reads it
        log.info("rerun: running %s (session %s)", ", ".join(names), session.session_id)
        session.run(pipeline_names=list(names))
        run_id = None
        catalog = context.catalog  # a fresh catalog: it loads the versions this run saved
        if raw is not None and _manifest_version(catalog) == session.session_id:
            raw.record(session.session_id, len(catalog.load(MANIFEST)))  # this run's manifest: its raw folder
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
