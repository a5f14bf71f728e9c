"""The served model's fast path and `osteo predict`'s light start-up (issue 15: latency).

The network runs through one graph traced at load (``ScanClassifier.forward_function``), not
``Model.predict``: it must give ``Model.predict``'s probabilities on the training loop's scaling.
The CLI imports neither TensorFlow nor MLflow until it has a model to load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.serving.model import PREDICT_CHUNK, ROI_COLUMNS, phantom_scan_png

SIZE = 32
CLASSES = ["normal", "osteoporosis"]
SETTINGS = {"size": SIZE, "margin": 0.05, "low_percentile": 1.0, "high_percentile": 99.0, "max_pixels": 50_000_000,
            "degenerate": {"min_side": 16.0, "max_aspect": 8.0, "min_dynamic_range": 0.05}, "fit": "stretch"}
HEAVY = ("tensorflow", "keras", "mlflow")


def tiny_network():
    """A small conv net of the served model's shape contract: uint8-scaled (S, S, 3) in, softmax out."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A ScanClassifier saved as training logs one (models from code, the Keras file, the config)."""
    import mlflow

    from osteo_pipeline.serving.model import ENTRY, KERAS_ARTIFACT, signature

    folder = tmp_path_factory.mktemp("tiny_classifier")
    keras_file = folder / "tiny.keras"
    tiny_network().save(keras_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no input example: no validation run needed here
        mlflow.pyfunc.save_model(
            path=str(folder / "model"), python_model=str(ENTRY), artifacts={KERAS_ARTIFACT: str(keras_file)},
            model_config={"class_names": CLASSES, "preprocessing": SETTINGS, "max_rows_per_request": 64},
            signature=signature(CLASSES), pip_requirements=["tensorflow"])  # given: inferring them reloads it
    return folder / "model"


@pytest.fixture(scope="module")
def classifier(saved_model: Path):
    import mlflow

    return mlflow.pyfunc.load_model(str(saved_model)).unwrap_python_model()


def test_the_traced_forward_pass_gives_model_predicts_probabilities(classifier):
    """One scan, a few, and more than one network call's chunk: the numbers ``Model.predict`` gives
    on the training loop's scaling (uint8 / 255 in float32), as float64 rows summing to 1."""
    rng = np.random.default_rng(0)
    for n in (1, 5, PREDICT_CHUNK + 3):
        images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        got = classifier.probabilities(images)
        expected = classifier.network.predict(images.astype(np.float32) / 255.0, verbose=0)
        assert got.dtype == np.float64 and got.shape == (n, len(CLASSES))
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_the_forward_pass_is_traced_once_at_load(classifier):
    """A concrete function: traced in load_context (not on the first request), and it cannot retrace."""
    from tensorflow.python.eager.polymorphic_function.concrete_function import ConcreteFunction

    assert isinstance(classifier._forward, ConcreteFunction)
    spec = classifier._forward.structured_input_signature[0][0]
    assert spec.shape.as_list() == [None, SIZE, SIZE, 3] and spec.dtype.name == "uint8"


def test_float_inputs_are_refused_not_cast(classifier):
    """The traced call would cast [0, 1] floats to 0/1 silently: the model inputs are uint8, say so."""
    with pytest.raises(TypeError, match="must be uint8"):
        classifier.probabilities(np.full((1, SIZE, SIZE, 3), 0.5, np.float32))


def test_a_request_frame_gets_the_response_table(classifier):
    """predict(): the columns, their order and types the signature declares; the fast path's numbers."""
    scans = [phantom_scan_png(), phantom_scan_png(96, 40)]
    frame = classifier.predict(None, pd.DataFrame({"image": scans, "name": ["a.png", "b.png"]}))
    assert list(frame.columns) == ["label", "p_normal", "p_osteoporosis", "roi_source", *ROI_COLUMNS]
    assert all(frame[c].dtype == np.float64 for c in ("p_normal", "p_osteoporosis"))
    assert all(frame[c].dtype == np.int64 for c in ROI_COLUMNS)
    for row, scan in zip(frame.itertuples(index=False), scans, strict=True):
        image, roi = classifier.prepare(scan)
        expected = classifier.network.predict(image[None].astype(np.float32) / 255.0, verbose=0)[0]
        np.testing.assert_allclose([row.p_normal, row.p_osteoporosis], expected, atol=1e-6, rtol=0)
        assert row.label == CLASSES[int(np.argmax(expected))]
        assert row.roi_source == roi.source and [row.roi_x0, row.roi_y0, row.roi_x1, row.roi_y1] == list(roi.box)


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_cli_module_imports_neither_tensorflow_nor_mlflow():
    done = python("import sys, osteo_pipeline.predict_cli\n"
                  f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
                  "assert not heavy, heavy")
    assert done.returncode == 0, done.stderr[-2000:]


def test_predict_help_imports_neither_tensorflow_nor_mlflow():
    done = python("import sys\nfrom osteo_pipeline.predict_cli import main\n"
                  "try:\n    main(['predict', '--help'])\n"
                  "except SystemExit as end:\n    assert end.code == 0, end.code\n"
                  f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
                  "assert not heavy, heavy")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--timings" in done.stdout


def test_timings_say_where_the_time_went(saved_model: Path, tmp_path: Path):
    """`--timings`: start-up, model load and each scan on stderr, as JSON; the answer unchanged."""
    from click.testing import CliRunner

    from osteo_pipeline.predict_cli import main

    scan = tmp_path / "phantom.png"
    scan.write_bytes(phantom_scan_png())
    result = CliRunner().invoke(main, ["predict", str(scan), "--model", str(saved_model), "--json", "--timings"])
    assert result.exit_code == 0, result.output
    (answer,) = json.loads(result.stdout)
    assert answer["error"] is None and set(answer["probabilities"]) == set(CLASSES)
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("osteo predict: timings ")]
    figures = json.loads(line.removeprefix("osteo predict: timings "))
    assert {"startup_s", "resolve_model_s", "model_load_s", "scan_ms", "total_s"} <= set(figures)
    assert len(figures["scan_ms"]) == 1 and figures["scan_ms"][0] > 0 and figures["model_load_s"] > 0


@pytest.mark.slow  # a fresh process: TensorFlow's import
def test_the_console_script_exits_at_once_with_its_output_and_status(saved_model: Path, tmp_path: Path):
    """`osteo predict` skips the interpreter's teardown (finish()): its output must all be out, its
    exit status kept, and MLflow's atexit clean-up still run."""
    scan, missing = tmp_path / "phantom.png", tmp_path / "missing.png"
    scan.write_bytes(phantom_scan_png())
    osteo = Path(sys.executable).parent / "osteo"
    done = subprocess.run([str(osteo), "predict", str(scan), str(missing), "--model", str(saved_model), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]  # one scan failed
    results = json.loads(done.stdout)  # the whole JSON list, flushed before the exit
    assert [r["scan"] for r in results] == [str(scan), str(missing)]
    assert results[0]["error"] is None and "No such file" in results[1]["error"]
    assert f"osteo predict: {missing}: " in done.stderr
