"""The raw folder listing: symlinked folders are followed, loops are not, and every folder
or file that cannot be read becomes a partition whose loader says why (nothing vanishes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.io.core import DatasetError

from osteo_pipeline.datasets import RawFolderDataset
from osteo_pipeline.datasets.raw_bytes import RawReadError

# As root, chmod 000 denies nothing; without the two DAC capabilities root is refused like
# any user (and still owns its files, the interpreter under /root included).
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []

LIST = """
import json, sys
from osteo_pipeline.datasets import RawFolderDataset
from osteo_pipeline.datasets.raw_bytes import RawReadError
try:
    parts = RawFolderDataset(path=sys.argv[1]).load()
except Exception as err:
    print(json.dumps({"error": str(err)})); sys.exit()
out = {}
for key, load in sorted(parts.items()):
    try:
        out[key] = len(load())
    except RawReadError as err:
        out[key] = [err.code, err.reason, str(err)]
print(json.dumps(out))
"""


def list_unprivileged(path: Path) -> dict:
    """Load the folder in a process that file permissions apply to."""
    if UNPRIVILEGED and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a folder unreadable")
    done = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", LIST, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def denied(path: Path) -> bool:
    probe = subprocess.run([*UNPRIVILEGED, "ls", str(path)], capture_output=True, timeout=30)
    return probe.returncode != 0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """raw/ with a symlinked class folder (another 'mount'), a loop, a broken link, a FIFO,
    and an unreadable sub-folder."""
    raw, mount = tmp_path / "raw", tmp_path / "mount"
    for rel in ("normal/a.png", "normal/deep/b.png", "osteoporosis/locked/c.png"):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(b"x" * 3)
    (mount / "osteopenia").mkdir(parents=True)
    (mount / "osteopenia" / "d.png").write_bytes(b"y" * 5)
    (raw / "osteopenia").symlink_to(mount / "osteopenia", target_is_directory=True)
    (raw / "normal" / "deep" / "up").symlink_to("..", target_is_directory=True)  # loop
    (raw / "normal" / "gone.png").symlink_to("nowhere.png")
    os.mkfifo(raw / "normal" / "pipe.png")
    os.chmod(raw / "osteoporosis" / "locked", 0)
    yield raw
    os.chmod(raw / "osteoporosis" / "locked", 0o755)


def test_symlinked_class_folder_is_followed_and_problems_are_partitions(tree: Path):
    parts = RawFolderDataset(path=str(tree)).load()
    assert parts["osteopenia/d.png"]() == b"y" * 5  # was one "Is a directory" error before
    assert parts["normal/deep/b.png"]() == b"x" * 3
    assert "normal/deep/up/b.png" not in parts  # the loop is not followed
    expected = {
        "normal/deep/up/": ("symlink_loop", "symbolic link to an enclosing folder (a loop); not followed"),
        "normal/gone.png": ("unreadable", "broken symbolic link: no such file or directory"),
        "normal/pipe.png": ("unreadable", "not a regular file (FIFO, socket or device)"),
    }
    for key, (code, reason) in expected.items():
        with pytest.raises(RawReadError) as err:
            parts[key]()
        assert (err.value.code, err.value.reason) == (code, reason)
        assert str(tree / key) in str(err.value)  # the console message names the path
        assert str(tree) not in err.value.reason  # the report's detail does not


def test_unreadable_sub_folder_is_a_partition_that_says_permission_denied(tree: Path):
    locked = tree / "osteoporosis" / "locked"
    if not denied(locked):
        pytest.skip("this system lets the test process read a mode-000 folder")
    listed = list_unprivileged(tree)
    assert listed["osteoporosis/locked/"][:2] == ["unreadable_folder", "folder cannot be listed: permission denied"]
    assert listed["osteopenia/d.png"] == 5 and listed["normal/a.png"] == 3


def test_missing_or_unreadable_raw_folder_says_so_and_names_the_path(tree: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match=f"The raw folder '{tmp_path / 'nope'}' does not exist"):
        RawFolderDataset(path=str(tmp_path / "nope")).load()
    locked = tree / "osteoporosis" / "locked"
    if not denied(locked):
        pytest.skip("this system lets the test process read a mode-000 folder")
    said = list_unprivileged(locked)["error"]
    assert said == f"The raw folder '{locked}' cannot be read: permission denied."


def test_relative_raw_folder_is_named_by_its_absolute_path(tmp_path: Path, monkeypatch):
    (tmp_path / "data" / "01_raw").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=f"The raw folder '{tmp_path / 'data' / '01_raw'}' holds no files"):
        RawFolderDataset(path="data/01_raw").load()


def test_raw_read_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(RawReadError("/x/y", "permission denied", "unreadable_folder")))
    assert (str(err), err.reason, err.code) == ("Cannot read /x/y: permission denied", "permission denied",
                                                "unreadable_folder")
