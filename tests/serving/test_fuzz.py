"""Fuzzing the real `mlflow models serve` server (127.0.0.1, the shared ``server`` fixture): a few
hundred seeded bad bodies. Every answer is a 4xx whose message names the problem, or a 200 with a
valid prediction; never a 5xx, and the server keeps serving (``/ping`` and a good scan after)."""

from __future__ import annotations

import base64
import http.client
import json
import random
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from osteo_pipeline.serving.model import MAX_ROWS_PER_REQUEST, request_body

pytestmark = pytest.mark.slow

SEED = 11
BUDGET_S = 60  # the whole fuzz, bodies and all; it takes well under half of that
JSON = "application/json"


@dataclass(frozen=True)
class Body:
    case: str
    data: bytes
    content_type: str | None = JSON
    expect: str | None = None  # what a 4xx message must say (None: any message naming the problem)
    rows: int | None = None  # a body that must get a 200 with this many predictions


def encode(payload: object) -> bytes:
    return json.dumps(payload).encode()


def split(rows: list[list[object]], columns: list[str] | None = None) -> bytes:
    return encode({"dataframe_split": {"columns": columns or ["image"], "data": rows}})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def flip_bits(data: bytes, rng: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def fuzz_bodies(scans: list[bytes], seed: int = SEED) -> Iterator[Body]:
    """The seeded bodies (about 300), real scans truncated and bit-flipped among them."""
    rng = random.Random(seed)
    for i in range(60):
        yield Body(f"random bytes {i}", rng.randbytes(rng.randrange(0, 4000)))
    for i in range(30):
        scan = rng.choice(scans)
        text = b64(scan)
        yield Body(f"truncated base64 text {i}", split([[text[: rng.randrange(1, len(text))]]]))
        yield Body(f"base64 of a truncated scan {i}", split([[b64(scan[: rng.randrange(0, len(scan))])]]))
    for i in range(50):
        scan = rng.choice(scans)
        yield Body(f"bit-flipped scan {i}", split([[b64(flip_bits(scan, rng, rng.choice([1, 8, 64])))]]))
    for i in range(20):
        text = bytearray(split([[b64(rng.choice(scans)[:3000])]]))
        for _ in range(rng.choice([1, 4, 16])):  # may break the JSON, the UTF-8 or the base64
            text[rng.randrange(len(text))] ^= 1 << rng.randrange(8)
        yield Body(f"bit-flipped request text {i}", bytes(text))
    wrong_images = {"number": 3, "float": 1.5, "true": True, "list": [1, 2], "object": {"a": 1},
                    "null": None, "empty string": "", "list of base64": [b64(scans[0][:100])]}
    for label, value in wrong_images.items():
        yield Body(f"image is {label}", split([[value]]))
        yield Body(f"image is {label} (records)", encode({"dataframe_records": [{"image": value}]}))
        yield Body(f"image is {label} (inputs)", encode({"inputs": {"image": [value]}}))
    wrong_requests = {
        "top-level list": [1, 2], "top-level number": 7, "top-level string": "scan", "top-level null": None,
        "no format key": {"image": b64(scans[0])}, "two format keys": {"dataframe_split": {}, "inputs": {}},
        "split is a number": {"dataframe_split": 5}, "split is null": {"dataframe_split": None},
        "split is a list": {"dataframe_split": [1, 2]},
        "columns not a list": {"dataframe_split": {"columns": "image", "data": [["x"]]}},
        "data not a list": {"dataframe_split": {"columns": ["image"], "data": "x"}},
        "row too long": {"dataframe_split": {"columns": ["image"], "data": [[b64(scans[0][:50]), "x", 3]]}},
        "row too short": {"dataframe_split": {"columns": ["image", "name"], "data": [[]]}},
        "duplicate columns": {"dataframe_split": {"columns": ["image", "image"], "data": [["QQ==", "QQ=="]]}},
        "name is a number": {"dataframe_split": {"columns": ["image", "name"], "data": [["QQ==", 5]]}},
        "name is an object": {"dataframe_split": {"columns": ["image", "name"], "data": [["QQ==", {"a": 1}]]}},
        "records not a list": {"dataframe_records": {"image": "QQ=="}},
        "records of numbers": {"dataframe_records": [1, 2, 3]},
        "inputs is a string": {"inputs": "QQ=="}, "instances of null": {"instances": [None]},
        "params not a dict": {"dataframe_split": {"columns": ["image"], "data": [["QQ=="]]}, "params": [1]},
        "params unknown": {"dataframe_split": {"columns": ["image"], "data": [["QQ=="]]}, "params": {"x": 1}},
    }
    for label, payload in wrong_requests.items():
        yield Body(label, encode(payload))
    huge = 3 * 1024 * 1024
    yield Body("huge base64 of zeros", split([["A" * huge]]), expect="not an image")
    yield Body("huge invalid base64", split([["!" * huge]]), expect="base64")
    yield Body("huge name", split([[b64(scans[0][:100]), "n" * huge]], ["image", "name"]))
    yield Body("huge JSON string key", encode({"x" * huge: 1}))
    yield Body("too many rows", split([[b64(bytes([i % 256]))] for i in range(500)]),
               expect=f"at most {MAX_ROWS_PER_REQUEST} scans")
    yield Body("one row over the limit", split([["QQ=="]] * (MAX_ROWS_PER_REQUEST + 1)),
               expect=f"at most {MAX_ROWS_PER_REQUEST} scans")
    yield Body("many rows, all valid", encode(request_body([scans[i % len(scans)] for i in range(MAX_ROWS_PER_REQUEST)])),
               rows=MAX_ROWS_PER_REQUEST)
    good = request_body([scans[0]])
    for content_type in ("text/plain", "application/octet-stream", "multipart/form-data; boundary=x",
                         "image/png", "application/json; charset=latin-1", "application/json; foo=bar",
                         "text/csv", "application/x-parquet", None):
        yield Body(f"content type {content_type}", encode(good), content_type)
    yield Body("csv of garbage", rng.randbytes(500), "text/csv")
    yield Body("parquet of garbage", rng.randbytes(500), "application/x-parquet")
    yield Body("raw scan bytes as the body", scans[0], "application/octet-stream")
    yield Body("invalid UTF-8", b'{"dataframe_split": {"columns": ["image"], "data": [["\xff\xfe\xc3("]]}}')
    yield Body("invalid UTF-8 key", b'{"\xff": 1}')
    yield Body("UTF-16 JSON", json.dumps(good).encode("utf-16"))
    for depth in (100, 5_000, 100_000):
        yield Body(f"nested lists {depth}", b"[" * depth + b"]" * depth)
        yield Body(f"nested objects {depth}", b'{"a":' * depth + b"1" + b"}" * depth)
        yield Body(f"image nested {depth}", b'{"dataframe_split": {"columns": ["image"], "data": [['
                   + b"[" * depth + b"]" * depth + b"]]}}")
    yield Body("NaN and Infinity", b'{"dataframe_split": {"columns": ["image"], "data": [[NaN], [Infinity]]}}')
    yield Body("empty body", b"")


def post(url: str, body: Body) -> tuple[int, str]:
    """POST ``body`` as is (http.client: urllib would add a form Content-Type where there is none)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    try:
        headers = {} if body.content_type is None else {"Content-Type": body.content_type}
        connection.request("POST", parts.path, body=body.data, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def problems(body: Body, status: int, text: str, class_names: list[str]) -> str | None:
    """What is wrong with the server's answer to ``body``; None when it is acceptable."""
    if status == 200:
        try:
            rows = json.loads(text)["predictions"]
        except (ValueError, KeyError, TypeError):
            return f"200 without predictions: {text[:200]}"
        if body.rows is not None and len(rows) != body.rows:
            return f"{len(rows)} predictions, expected {body.rows}"
        for row in rows:
            probabilities = [row[f"p_{c}"] for c in class_names]
            if row["label"] not in class_names or abs(sum(probabilities) - 1) > 1e-5:
                return f"invalid prediction {row}"
        return None
    if body.rows is not None:
        return f"{status} for a valid request: {text[:300]}"
    if not 400 <= status < 500:
        return f"status {status}: {text[:300]}"
    try:
        message = json.loads(text).get("message", "") if text.lstrip().startswith("{") else text
    except ValueError:
        message = text
    if len(message.strip()) < 10:
        return f"{status} without a message: {text[:200]!r}"
    if body.expect is not None and body.expect not in message:
        return f"{status} message lacks {body.expect!r}: {message[:300]}"
    return None


def test_fuzzed_requests_get_a_4xx_naming_the_problem_or_a_valid_prediction(server: str, served_project: dict):
    scans = [s["path"].read_bytes() for s in served_project["scans"]]
    class_names = served_project["class_names"]
    start, failures, statuses = time.monotonic(), [], {}
    for count, body in enumerate(fuzz_bodies(scans), start=1):
        status, text = post(f"{server}/invocations", body)
        statuses[status] = statuses.get(status, 0) + 1
        if (problem := problems(body, status, text, class_names)) is not None:
            failures.append(f"{body.case}: {problem}")
        assert time.monotonic() - start < BUDGET_S, f"fuzz over {BUDGET_S} s after {count} bodies"
    assert count >= 250, count
    assert not failures, f"{len(failures)} bad answers (statuses {statuses}):\n" + "\n".join(failures)
    assert statuses.get(200, 0) >= 2 and statuses.get(400, 0) >= 200, statuses  # both kinds were hit

    # still serving, and still right
    with urllib.request.urlopen(f"{server}/ping", timeout=30) as response:
        assert response.status == 200
    status, text = post(f"{server}/invocations", Body("good", encode(request_body(scans))))
    assert status == 200, text
    for row, scan in zip(json.loads(text)["predictions"], served_project["scans"], strict=True):
        np.testing.assert_allclose([row[f"p_{c}"] for c in class_names], scan["probabilities"], atol=1e-5, rtol=0)
