"""What a registered model carries of this package, so it runs where ``osteo_pipeline`` is not
installed: a fresh virtualenv built from the model's own requirements (``mlflow models serve
--env-manager virtualenv``), a container, another team's machine.

``package_code`` lays out a minimal ``osteo_pipeline`` (the package ``__init__`` plus only the
parts a model imports) for MLflow's ``code_paths``; MLflow copies it to the model's ``code/``
folder and puts that folder on ``sys.path`` when it loads the model. Where the project itself is
installed (``osteo predict``, ``--env-manager local``), the installed package is already imported
and wins. ``pinned`` writes the pip requirements for what that code imports.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import osteo_pipeline

PACKAGE = Path(osteo_pipeline.__file__).resolve().parent

# The parts of the package each kind of registered model imports (checked in a clean virtualenv by
# tests/serving/test_self_contained.py: nothing else of the project is imported, Kedro is not needed).
SCAN_CLASSIFIER_CODE = ("serving", "imaging")  # entry.py -> serving.model -> imaging.{decode,preprocess,roi,quality}
CLASSICAL_CODE = ("models/classical.py",)  # the skops-trusted feature function and calibration folds
FUSION_CODE = ("models/fusion.py",)  # the ImputeStandardize layer

# A TensorFlow build is one of several distributions of the same package; a model names the
# canonical one, so a model trained on a CPU-only box installs on a GPU box (and the reverse).
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tensorflow-gpu")


@contextmanager
def package_code(parts: Sequence[str]) -> Iterator[list[str]]:
    """``code_paths`` for MLflow: a temporary ``osteo_pipeline`` folder holding the package's
    ``__init__.py`` and ``parts`` (sub-packages or module files, relative to the package), with
    the ``__init__.py`` of every package on the way; caches and other files are left out."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / PACKAGE.name
        target.mkdir()
        shutil.copy2(PACKAGE / "__init__.py", target / "__init__.py")
        for part in parts:
            source = PACKAGE / part
            if not source.exists():
                raise FileNotFoundError(f"{part} is not part of {PACKAGE}")
            for parent in Path(part).parents:
                if str(parent) != "." and (PACKAGE / parent / "__init__.py").is_file():
                    (target / parent).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(PACKAGE / parent / "__init__.py", target / parent / "__init__.py")
            if source.is_dir():
                shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, target / part)
        yield [str(target)]


def tensorflow_version() -> str | None:
    """The installed TensorFlow's release (``2.21.0``), whichever distribution provides it."""
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            return re.sub(r"\+.*$", "", metadata.version(name))  # a local build tag (+cu12...) is no release
        except metadata.PackageNotFoundError:
            continue
    return None


def pinned(names: Sequence[str]) -> list[str]:
    """``name==<installed version>`` for each installed distribution in ``names`` (others are
    skipped); ``tensorflow`` stands for whichever TensorFlow distribution is installed."""
    found = []
    for name in names:
        if name == "tensorflow":
            version = tensorflow_version()
        else:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        if version:
            found.append(f"{name}=={version}")
    return found
