"""The model card of a registered model version: its MLflow description (markdown, shown on the
model-version page of the MLflow UI) and its tags (searchable, shown as columns).

Training writes what it knows when it registers a version (``status: registered``); evaluate
rewrites the card of each version it evaluated with the test metrics and CIs (``status:
evaluated``). Patient data: a card is built from allow-listed fields only (counts, the data
fingerprint's hash and counts, metrics), never from paths, names, ids or dates of a scan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INTENDED_USE = (
    "Research use only: to reproduce and compare classifiers of osteoporosis on spine DXA scans "
    "(normal vs osteoporosis, or normal/osteopenia/osteoporosis) on a research cohort, and to study "
    "their errors. Users are researchers and ML engineers, not clinicians."
)
NOT_FOR_CLINICAL_USE = (
    "NOT FOR CLINICAL USE: not a medical device, not validated for diagnosis, screening or treatment "
    "decisions; its output must never reach a patient's record or care."
)
KNOWN_LIMITATIONS = (
    "Trained and tested on one cohort (the data fingerprint below; the project's default cohort is "
    "synthetic): performance on other scanners, sites, populations and acquisition protocols is "
    "unknown until an external validation (`kedro run --pipelines=external_validation`).",
    "Spine DXA scans only: any other image gets a label too; only blank, tiny or flat images are refused.",
    "Probabilities are not calibrated to a clinical threshold (see the calibration figure of the "
    "evaluation report); the label is the most probable class.",
    "The test-set CIs come from a patient bootstrap of one held-out split; a small test set gives wide "
    "intervals and weak comparisons.",
)
IMAGE_LIMITATION = ("Serving has no expert ROI box: the ROI is detected automatically (or the whole image "
                    "is used), as the pipeline does for a scan without one.")
UNPRETRAINED_LIMITATION = ("Its backbone started from random weights (no ImageNet weights were available "
                           "offline): not the paper's pretrained transfer model.")
# The data fingerprint's fields a card may show: hashes and counts only.
FINGERPRINT_FIELDS = ("manifest_sha256", "split_seed", "n_scans", "n_patients")
CARD_METRICS = ("auc", "accuracy", "precision", "recall", "specificity", "f1")


@dataclass
class ModelCard:
    """What a registered version's card says; every field is allow-listed (no patient data)."""

    model: str  # the study's name, e.g. cnn21
    family: str | None = None  # cnn21 | transfer | classical | fusion
    input: str = ""
    label_scheme: str | None = None
    classes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # fingerprint_fields(...)
    train_counts: dict[str, Any] = field(default_factory=dict)  # n_scans, n_patients, class_counts
    test: dict[str, Any] | None = None  # test_summary(...)
    pretrained: bool | None = None  # transfer models only
    selection: str | None = None  # the registry rule's verdict (champion / challenger and why)
    limitations: list[str] = field(default_factory=list)  # beyond KNOWN_LIMITATIONS

    @property
    def status(self) -> str:
        return "evaluated" if self.test else "registered"


def fingerprint_fields(fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
    """The allow-listed part of split_augment's data fingerprint, plus the views studied."""
    fingerprint = fingerprint or {}
    fields_ = {k: fingerprint[k] for k in FINGERPRINT_FIELDS if fingerprint.get(k) is not None}
    studied = (fingerprint.get("views") or {}).get("studied") if isinstance(fingerprint.get("views"), Mapping) else None
    if studied:
        fields_["views_studied"] = [str(v) for v in studied]
    return fields_


def _counts(counts: Mapping[str, Any] | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in (counts or {}).items()}


def training_counts(report: Mapping[str, Any] | None) -> dict[str, Any]:
    """Scan, patient and per-class counts of the training partition, from a final-fit report."""
    report = report or {}
    out: dict[str, Any] = {}
    for key, name in (("n_training_scans", "n_scans"), ("n_training_patients", "n_patients")):
        if report.get(key) is not None:
            out[name] = int(report[key])
    if report.get("class_counts"):
        out["class_counts"] = _counts(report["class_counts"])
    return out


def test_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A model's evaluate metrics (``compute_test_metrics``' entry) as the card shows them: counts,
    per-class counts and each metric with its CI."""
    classes = list(metrics.get("class_names") or [])
    matrix = metrics.get("confusion_matrix")
    class_counts = ({c: int(sum(row)) for c, row in zip(classes, matrix, strict=True)}
                    if matrix is not None and len(matrix) == len(classes) else {})
    cis = metrics.get("ci") or {}
    bootstrap = metrics.get("bootstrap") or {}
    level = round(100 * (1 - float(bootstrap.get("alpha", 0.05))))
    return {
        "n_scans": int(metrics["n_scans"]), "n_patients": int(metrics["n_patients"]), "class_counts": class_counts,
        "ci_level": level, "ci_method": f"{bootstrap.get('method', 'patient bootstrap')}, {bootstrap.get('n_boot', '?')} resamples",
        "metrics": {m: {"value": metrics.get(m), "lo": (cis.get(m) or {}).get("lo"), "hi": (cis.get(m) or {}).get("hi")}
                    for m in CARD_METRICS if m in metrics},
    }


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def metric_text(entry: Mapping[str, Any]) -> str:
    """``0.912 (0.850 to 0.960)``, or the value alone where the CI is undefined."""
    if entry.get("lo") is None or entry.get("hi") is None:
        return _number(entry.get("value"))
    return f"{_number(entry.get('value'))} ({_number(entry['lo'])} to {_number(entry['hi'])})"


def limitations(card: ModelCard) -> list[str]:
    found = list(KNOWN_LIMITATIONS)
    if card.input.startswith("raw scan"):
        found.append(IMAGE_LIMITATION)
    if card.pretrained is False:
        found.append(UNPRETRAINED_LIMITATION)
    return found + list(card.limitations)


def card_tags(card: ModelCard) -> dict[str, str]:
    """The card as model-version tags (flat strings)."""
    tags = {
        "card.status": card.status,
        "intended_use": "research only",
        "clinical_use": "not for clinical use",
        "model": card.model,
        "pretrained": "n/a" if card.pretrained is None else str(card.pretrained).lower(),
    }
    if card.family:
        tags["family"] = card.family
    if card.label_scheme:
        tags["label_scheme"] = card.label_scheme
    if card.classes:
        tags["classes"] = ",".join(card.classes)
    for key, value in card.data.items():
        tags[f"data.{key}"] = ",".join(value) if isinstance(value, list) else str(value)
    if card.data.get("manifest_sha256"):
        tags["data.fingerprint"] = str(card.data["manifest_sha256"])[:12]  # as report.md and the runs show it
    if card.train_counts.get("class_counts"):
        tags["train.class_counts"] = json.dumps(card.train_counts["class_counts"])
    if card.test:
        tags["test.n_scans"] = str(card.test["n_scans"])
        tags["test.class_counts"] = json.dumps(card.test["class_counts"])
        for metric, entry in card.test["metrics"].items():
            tags[f"test.{metric}"] = metric_text(entry)
    return tags


def card_markdown(card: ModelCard) -> str:
    """The card as the version's description (markdown)."""
    lines = [f"# Model card: {card.model}", "", f"**{NOT_FOR_CLINICAL_USE}**", "",
             "## Intended use", INTENDED_USE, "", "## Model",
             f"- Family: {card.family or 'n/a'}; input: {card.input or 'n/a'}",
             f"- Pretrained backbone: {'n/a (trained from scratch or not a transfer model)' if card.pretrained is None else str(card.pretrained).lower()}",
             f"- Label scheme: {card.label_scheme or 'n/a'} (classes, in output order: {', '.join(card.classes) or 'n/a'})",
             "", "## Training data"]
    if card.data:
        data = card.data
        lines.append(f"- Data fingerprint (manifest sha256): `{data.get('manifest_sha256', 'n/a')}`; split seed "
                     f"{data.get('split_seed', 'n/a')}; cohort {data.get('n_scans', '?')} scans of {data.get('n_patients', '?')} patients"
                     + (f"; views {', '.join(data['views_studied'])}" if data.get("views_studied") else ""))
    else:
        lines.append("- Data fingerprint: not recorded")
    if card.train_counts:
        counts = card.train_counts
        per_class = ", ".join(f"{k} {v}" for k, v in (counts.get("class_counts") or {}).items())
        lines.append(f"- Training partition: {counts.get('n_scans', '?')} scans of {counts.get('n_patients', '?')} patients"
                     + (f" ({per_class})" if per_class else ""))
    lines += ["", "## Test metrics"]
    if card.test:
        test = card.test
        per_class = ", ".join(f"{k} {v}" for k, v in test["class_counts"].items())
        lines += [f"Held-out test partition: {test['n_scans']} scans of {test['n_patients']} patients ({per_class}); "
                  f"{test['ci_level']}% CIs by {test['ci_method']}.", "",
                  f"| metric | value ({test['ci_level']}% CI) |", "|---|---|",
                  *(f"| {m} | {metric_text(e)} |" for m, e in test["metrics"].items())]
    else:
        lines.append("Not evaluated yet: `kedro run --pipelines=evaluate` writes them here.")
    if card.selection:
        lines += ["", "## Registry selection", card.selection]
    lines += ["", "## Known limitations", *(f"- {item}" for item in limitations(card))]
    return "\n".join(lines) + "\n"


def write_card(client: Any, name: str, version: str | int, card: ModelCard) -> None:
    """Set the version's description and tags to ``card`` (``client``: an ``MlflowClient``)."""
    client.update_model_version(name, str(version), description=card_markdown(card))
    for key, value in card_tags(card).items():
        client.set_model_version_tag(name, str(version), key, value)
