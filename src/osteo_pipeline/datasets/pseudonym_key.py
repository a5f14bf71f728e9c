"""The project's secret pseudonym key, kept in a local file and never shown, logged or tracked.

A dataset rather than a parameter: kedro-mlflow logs every node parameter to MLflow, and the
key must stay out of it. It is also read in every Kedro environment (``--env test`` included),
which a conf/local parameter would not be.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

# Forces a key for one run (e.g. one shared by several sites so their pseudonyms match).
KEY_ENV_VAR = "OSTEO_PSEUDONYM_KEY"


class PseudonymKeyDataset(AbstractDataset[None, str]):
    """Loads the key from ``$OSTEO_PSEUDONYM_KEY``, else from ``filepath``; on first use it writes a
    random one there (``secrets.token_hex(32)``, file mode 0600). Refuses to save."""

    def __init__(self, filepath: str, env_var: str = KEY_ENV_VAR, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self._env_var = env_var
        self.metadata = metadata

    def load(self) -> str:
        forced = os.environ.get(self._env_var, "").strip()
        if forced:
            return forced
        try:
            key = self._filepath.read_text().strip()
        except FileNotFoundError:
            key = ""
        if key:
            return key
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        try:  # O_EXCL: two runs starting together must not each write their own key
            fd = os.open(self._filepath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another run wrote it just now: wait for its content
            for _ in range(50):
                if key := self._filepath.read_text().strip():
                    return key
                time.sleep(0.1)
            raise DatasetError(f"The pseudonym key file {self._filepath} is empty: delete it to make a new one") from None
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
        return key

    def save(self, data: str) -> None:
        raise DatasetError("The pseudonym key is created on first use; edit its file by hand if you must.")

    def _exists(self) -> bool:
        return True  # made on first load: never a missing input of a run

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "env_var": self._env_var}  # never the key
