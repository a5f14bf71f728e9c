"""The study's models as conf/ declares them, for building pipelines (issue 13: one model registry).

Kedro builds pipelines before it loads a run's configuration, so the training and evaluate
pipelines read the declaration here: the ``train_baselines`` parameters of ``conf/base`` and of
the run environment (``KEDRO_ENV``, else ``local``), with the project's own config-loader settings.
Nodes get the same blocks as ``params:train_baselines`` and derive the same list from them
(``evaluation.models.declared_families``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from kedro.framework.project import settings
from kedro.utils import find_kedro_project

from osteo_pipeline.evaluation.models import declared_families


@functools.cache
def _families(project: Path, env: str | None, stamp: tuple) -> tuple[tuple[str, str], ...]:
    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(project / settings.CONF_SOURCE), env=env,
                                          **settings.CONFIG_LOADER_ARGS)
    return tuple(declared_families(loader["parameters"].get("train_baselines", {})).items())


def declared_models(project: Path | None = None) -> dict[str, str]:
    """Model name -> family, in report order (CNN21 first), as conf/ declares them."""
    root = project or find_kedro_project(Path.cwd())
    if root is None:
        raise RuntimeError(f"no Kedro project at or above {Path.cwd()}: the model declaration lives in its conf/")
    root, env = Path(root).resolve(), os.environ.get("KEDRO_ENV")
    # Read again when a parameters file changes (a test, a notebook adding a model in one process).
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in sorted((root / settings.CONF_SOURCE).rglob("parameters*")))
    return dict(_families(root, env, stamp))
