"""The registered image models as MLflow pyfuncs: raw scan bytes in, label and probabilities out.

Request to ``mlflow models serve`` (binary columns travel base64-encoded)::

    {"dataframe_split": {"columns": ["image", "name"], "data": [["<base64 of a PNG/JPEG/TIFF/DICOM>", "a.png"]]}}

``name`` is optional and only labels error messages. Response: one row per scan with ``label``,
``p_<class>`` for every class and the ROI used (``roi_source``: ``auto`` or ``whole``, and
``roi_x0, roi_y0, roi_x1, roi_y1`` in scan pixels). A bad request gets HTTP 400 naming the
problem: a scan that cannot be decoded (not an image, empty, over the pixel limit...) by its
name, a value that is not scan bytes, more than ``max_rows_per_request`` scans (model config).
"""

from __future__ import annotations

import base64
import functools
import io
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema
from PIL import Image

from osteo_pipeline.imaging.decode import ScanDecodeError
from osteo_pipeline.imaging.preprocess import RoiChoice, scale_images
from osteo_pipeline.serving.packaging import SCAN_CLASSIFIER_CODE, package_code
from osteo_pipeline.serving.preprocessing import ScanPreprocessing

KERAS_ARTIFACT = "keras_model"
ENTRY = Path(__file__).with_name("entry.py")  # MLflow "models from code": the file that names the class
ROI_COLUMNS = ["roi_x0", "roi_y0", "roi_x1", "roi_y1"]
# Scans per request: a bound on one request's work and memory (decoding is per scan, the
# network runs in chunks); the logged model config carries it as ``max_rows_per_request``.
MAX_ROWS_PER_REQUEST = 64
PREDICT_CHUNK = 16  # scans per network call: bounds activation memory of a full request
NAME_CHARS = 80  # a client's scan name is echoed in errors: this much of it


def bad_request(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and ``message``."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def scan_label(name: Any, index: int) -> str:
    """How errors name a scan: its (shortened) ``name`` when the client gave one, else its row."""
    if isinstance(name, str) and name.strip():
        return name if len(name) <= NAME_CHARS else name[:NAME_CHARS] + "..."
    return f"scan {index}"


def guard_scoring_server() -> None:
    """Make MLflow's scoring server answer two client faults with a 4xx instead of a 500.

    It lets a JSON body nested too deeply for Python's parser (``RecursionError``) and a POST
    without ``Content-Type`` (``None.split``) escape as "Internal Server Error"; both are the
    request's fault, and say so now. Wraps the module's ``invocations``, which its request
    handler looks up per request. Idempotent; a no-op outside the scoring server process.
    """
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    if server is None or getattr(server.invocations, "osteo_guarded", False):
        return
    handle = server.invocations

    @functools.wraps(handle)
    def invocations(data: Any, content_type: str | None, model: Any, input_schema: Any) -> Any:
        if not content_type:
            return server.InvocationsResponse(
                response="The request has no Content-Type header: send JSON as application/json",
                status=415, mimetype="text/plain")
        try:
            return handle(data, content_type, model, input_schema)
        except RecursionError:
            raise MlflowException("The request JSON is nested too deeply to parse", error_code=BAD_REQUEST) from None

    invocations.osteo_guarded = True
    server.invocations = invocations


def probability_column(class_name: str) -> str:
    return f"p_{class_name}"


class ScanClassifier(mlflow.pyfunc.PythonModel):
    """A Keras image model behind the pipeline's own scan preprocessing (``ScanPreprocessing``)."""

    network: keras.Model
    class_names: list[str]
    preprocessing: ScanPreprocessing
    max_rows: int

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config or {}
        if "class_names" not in config or "preprocessing" not in config:
            raise MlflowException(f"model config lacks class_names/preprocessing: {sorted(config)}")
        self.class_names = list(config["class_names"])
        self.preprocessing = ScanPreprocessing.from_dict(config["preprocessing"])
        self.max_rows = int(config.get("max_rows_per_request", MAX_ROWS_PER_REQUEST))  # older models lack it
        self.network = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self._forward = self.forward_function()
        guard_scoring_server()

    def forward_function(self) -> Any:
        """Scaling and the network as one graph, traced here, once: a concrete function of any
        batch size of uint8 (N, S, S, 3) inputs that cannot retrace.

        ``Model.predict`` builds a data adapter and its own loop per call (50-70 ms more per scan
        on 2 CPU cores, bench/serving.json); eager ``model(x)`` dispatches op by op (15-30 ms more).
        The traced graph is the same arithmetic (the same kernels, oneDNN's on x86 CPUs, cuDNN's
        on a GPU) without that per-call overhead, and tracing at load keeps it off the first
        request. TensorFlow's own thread pools are left as they are: by default they size to the
        CPUs this process may run on (both of 2; a GPU box's all), which measured no slower than
        any fixed setting.
        """
        import tensorflow as tf

        size = self.preprocessing.size
        network = self.network

        # autograph off: nothing here branches on tensors, and tracing takes half the time
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], autograph=False)
        def forward(images: tf.Tensor) -> tf.Tensor:
            return network(scale_images(images), training=False)

        return forward.get_concrete_function()

    def prepare(self, data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, RoiChoice]:
        """One scan's uint8 model input and the ROI used; raises ``ScanDecodeError``."""
        return self.preprocessing.model_input(data, name)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) of uint8 model inputs (N, S, S, 3), scaled as in training."""
        if images.dtype != np.uint8:  # the traced call would cast floats in [0, 1] to 0/1 without a word
            raise TypeError(f"model inputs must be uint8 (N, S, S, 3) as prepare() gives them, got {images.dtype}")
        if len(images) <= PREDICT_CHUNK:  # one call, no concatenation (one scan: the CLI, most requests)
            return self._forward(images).numpy().astype(np.float64)
        chunks = [self._forward(images[i : i + PREDICT_CHUNK]).numpy() for i in range(0, len(images), PREDICT_CHUNK)]
        return np.concatenate(chunks).astype(np.float64)

    def table(self, probabilities: np.ndarray, rois: Sequence[RoiChoice]) -> pd.DataFrame:
        """The response rows: label, one probability per class, the ROI used."""
        boxes = np.asarray([roi.box for roi in rois], dtype=np.int64).reshape(-1, 4)
        # one constructor call: a column set at a time costs ~0.5 ms each, several ms a request
        return pd.DataFrame({
            "label": [self.class_names[i] for i in probabilities.argmax(axis=1)],
            **{probability_column(name): probabilities[:, k] for k, name in enumerate(self.class_names)},
            "roi_source": [roi.source for roi in rois],
            **{column: boxes[:, j] for j, column in enumerate(ROI_COLUMNS)},
        })

    # A DataFrame hint is one MLflow infers no schema from: the explicit signature (a binary
    # column, base64 in JSON requests) stays the one the server parses requests with.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Label and probabilities per scan of a frame with an ``image`` column of raw scan bytes."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise bad_request(f"the request needs an 'image' column of scan bytes; got {list(frame.columns)}")
        if frame.empty:
            raise bad_request("the request holds no scans")
        if len(frame) > self.max_rows:
            # before any decoding: the work a request may ask for is bounded
            raise bad_request(f"the request holds {len(frame)} scans; send at most {self.max_rows} scans "
                              "per request (model config max_rows_per_request)")
        names = frame["name"] if "name" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        images, rois, errors = [], [], []
        for i, (data, name) in enumerate(zip(frame["image"], names, strict=True)):
            label = scan_label(name, i)
            if not isinstance(data, bytes | bytearray | memoryview):
                errors.append(f"Cannot decode {label}: expected scan bytes (base64 in JSON), got {type(data).__name__}")
                continue
            if not data:  # base64 decoding drops characters outside its alphabet: say so
                errors.append(f"Cannot decode {label}: empty file (0 bytes after base64 decoding: "
                              "an empty string or no base64 characters)")
                continue
            try:
                image, roi = self.prepare(bytes(data), label)
            except ScanDecodeError as error:
                errors.append(str(error))
                continue
            images.append(image)
            rois.append(roi)
        if errors:
            # 400, not 500: the request is at fault, and the server goes on serving.
            raise bad_request(f"{len(errors)} of {len(frame)} scans rejected: " + "; ".join(errors[:10])
                              + (f"; and {len(errors) - 10} more" if len(errors) > 10 else ""))
        return self.table(self.probabilities(np.stack(images)), rois)


def signature(class_names: Sequence[str]) -> ModelSignature:
    """Raw scan bytes (plus an optional name) in; label, probabilities and ROI out."""
    inputs = Schema([ColSpec("binary", "image"), ColSpec("string", "name", required=False)])
    outputs = Schema([
        ColSpec("string", "label"),
        *(ColSpec("double", probability_column(c)) for c in class_names),
        ColSpec("string", "roi_source"),
        *(ColSpec("long", c) for c in ROI_COLUMNS),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def phantom_scan_png(height: int = 64, width: int = 32) -> bytes:
    """A synthetic phantom PNG (grey ramp, bright central column): the logged input example.

    Patient pixels must not reach the registry, and a blank image would fail serving's own
    degenerate-scan check when MLflow validates the example.
    """
    ramp = np.linspace(40, 160, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    ramp[:, width // 3 : 2 * width // 3] += 80  # a vertebral column of sorts
    buffer = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def request_body(scans: Sequence[bytes], names: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON body ``mlflow models serve`` expects for these scans (``dataframe_split``, base64)."""
    encoded = [base64.b64encode(s).decode("ascii") for s in scans]
    if names is None:
        return {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
    rows = [[e, n] for e, n in zip(encoded, names, strict=True)]
    return {"dataframe_split": {"columns": ["image", "name"], "data": rows}}


def log_scan_classifier(
    network: keras.Model,
    class_names: Sequence[str],
    preprocessing: ScanPreprocessing,
    registered_model_name: str | None,
    pip_requirements: Sequence[str],
    metadata: dict[str, Any] | None = None,
) -> ModelInfo:
    """Log ``network`` behind the scan preprocessing as an MLflow pyfunc (models from code, the
    Keras file as an artifact, the settings as model config), register it; return its info.

    Self-contained: the parts of this package it runs travel in its ``code/`` folder
    (``packaging.SCAN_CLASSIFIER_CODE``) and ``pip_requirements`` name what they import, so it
    serves from a fresh virtualenv built from its own requirements.
    """
    if tuple(network.input_shape[1:3]) != (preprocessing.size, preprocessing.size):
        raise ValueError(f"model input {network.input_shape} does not match preprocessing size {preprocessing.size}")
    config = {"class_names": list(class_names), "preprocessing": preprocessing.to_dict(),
              "max_rows_per_request": MAX_ROWS_PER_REQUEST}
    with tempfile.TemporaryDirectory() as tmp, package_code(SCAN_CLASSIFIER_CODE) as code_paths:
        keras_file = Path(tmp) / "model.keras"
        network.save(keras_file)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(ENTRY),
            artifacts={KERAS_ARTIFACT: str(keras_file)},
            model_config=config,
            code_paths=code_paths,
            signature=signature(class_names),
            input_example=pd.DataFrame({"image": [phantom_scan_png()]}),
            registered_model_name=registered_model_name,
            pip_requirements=list(pip_requirements),
            metadata={"class_names": list(class_names), "preprocessing": preprocessing.to_dict(),
                      "input": "raw scan bytes (PNG, JPEG, TIFF or DICOM)", **(metadata or {})},
        )
