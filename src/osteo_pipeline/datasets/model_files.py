"""Model files as the catalog reads them: a file that cannot be read is named, with what to do.

``KerasModelDataset`` and ``SklearnModelDataset`` are kedro-datasets' ``TensorFlowModelDataset``
and ``PickleDataset`` (versioned as usual) whose load says "model file data/06_models/x.keras/<v>/x.keras
cannot be read: it is truncated or corrupt (...)" instead of the reader's traceback (zipfile, h5py,
pickle), which names neither the file nor the cure. ``osteo predict`` shares ``describe_problem``.
"""

from __future__ import annotations

import os
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.pickle import PickleDataset
from kedro_datasets.tensorflow import TensorFlowModelDataset


def _root_cause(error: BaseException) -> BaseException:
    while (inner := error.__cause__ or error.__context__) is not None and inner is not error:
        error = inner
    return error


def describe_problem(path: str | os.PathLike | None, error: BaseException) -> str:
    """What is wrong with the file itself, when that can be told (Keras files are zip archives);
    else what its reader said. Shared with ``osteo predict``."""
    import zipfile

    if path is None:
        root = _root_cause(error)
        return f"{type(root).__name__}: {root}"
    try:
        size = os.path.getsize(path)
    except OSError as failed:
        return f"{type(failed).__name__}: {failed}"
    if size == 0:
        return "the file is empty (0 bytes)"
    if str(path).endswith(".keras"):
        if not zipfile.is_zipfile(path):
            return f"not a complete .keras zip archive ({size} bytes)"
        try:
            with zipfile.ZipFile(path) as archive:
                if (bad := archive.testzip()) is not None:
                    return f"member {bad} of the archive is damaged"
        except (zipfile.BadZipFile, OSError, EOFError) as failed:
            return f"damaged zip archive ({failed})"
    root = _root_cause(error)
    return f"{type(root).__name__}: {root}"


def unreadable_model_message(path: str | os.PathLike, error: BaseException) -> str:
    """``model file <path relative to the project> cannot be read: it is truncated or corrupt (...)``,
    with what to do; the reader's own traceback (zipfile, h5py, pickle) names neither."""
    shown = os.path.relpath(path) if os.path.isabs(path) else str(path)
    return (f"model file {shown} cannot be read: it is truncated or corrupt ({describe_problem(path, error)}). "
            f"Retrain the model, or delete {os.path.dirname(shown)}/ to use its previous version.")


class _NamesTheFile:
    """Mixin: a load error names the model file (``unreadable_model_message``)."""

    def load(self) -> Any:
        try:
            return super().load()
        except Exception as error:
            if isinstance(_root_cause(error), (ImportError, MemoryError)):
                raise  # a broken install or a full machine, not a bad file
            raise DatasetError(unreadable_model_message(str(self._get_load_path()), error)) from error


class KerasModelDataset(_NamesTheFile, TensorFlowModelDataset):
    """``tensorflow.TensorFlowModelDataset`` whose load names an unreadable file; the project's own
    layers (the fusion network's ``ImputeStandardize``) are registered before any model is read."""

    def load(self) -> Any:
        import osteo_pipeline.models.fusion  # noqa: F401 - registers the fusion network's own layers

        return super().load()


class SklearnModelDataset(_NamesTheFile, PickleDataset):
    """``pickle.PickleDataset`` whose load names an unreadable file."""
