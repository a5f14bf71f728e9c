"""The MLflow model registry after evaluation: a model card on every evaluated version, and the
``champion`` / ``challenger`` aliases by one rule (``evaluate.registry``, parameters_evaluate.yml).

The rule: among the evaluated models that take raw scans (``eligible_families``: the image
pyfuncs ``mlflow models serve`` and ``osteo predict`` run), whose test ``metric`` CI lower bound
is above ``min_ci_low`` (better than chance), the one with the highest test ``metric`` (ROC-AUC;
macro one-vs-rest with three classes); ties go to the higher CI lower bound, then the higher
accuracy, then the declaration order (CNN21 first).

Aliases are per registered model in MLflow, so: the rule's winner gets ``champion`` on its own
name (e.g. ``models:/osteo-cnn21@champion``) and every other registered model of the project
loses it, so exactly one carries it: *the project's champion* (``project_champion`` finds it;
``osteo predict`` and the README's serving command default to it). Every other evaluated version
gets ``challenger`` on its own name. The reason is the version tag ``champion_reason`` /
``challenger_reason``. When no model passes the rule, no model is champion (a stale champion,
evaluated on other data, must not be served in its place).

``choose_champion`` and the card builders are pure; ``publish`` holds every MLflow call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from osteo_pipeline.serving.card import ModelCard, fingerprint_fields, test_summary, training_counts, write_card
from osteo_pipeline.serving.registry import CHALLENGER, CHAMPION, PROJECT_TAG, PROJECT_TAG_VALUE

logger = logging.getLogger(__name__)

MODEL_INPUTS = {
    "cnn21": "raw scan bytes (PNG, JPEG, TIFF or DICOM)",
    "transfer": "raw scan bytes (PNG, JPEG, TIFF or DICOM)",
    "classical": "uint8 arrays (the model input images, 150 px)",
    "fusion": "float32 arrays: the image scaled to [0, 1] and the clinical covariates",
}


@dataclass(frozen=True)
class Candidate:
    """One evaluated model as the rule sees it."""

    model: str
    family: str
    value: float | None  # the rule's metric on the test set
    ci_low: float | None
    ci_high: float | None
    accuracy: float | None
    order: int  # declaration order (the reference model first)


@dataclass
class Selection:
    """The rule's verdict: the champion (or none) and a reason per model."""

    champion: str | None
    reasons: dict[str, str] = field(default_factory=dict)
    ranking: list[str] = field(default_factory=list)  # eligible models, best first


def candidates(test_metrics: Mapping[str, Mapping[str, Any]], families: Mapping[str, str], metric: str) -> list[Candidate]:
    """The evaluated models (``compute_test_metrics``' keys, in declaration order) as candidates."""
    out = []
    for order, (name, metrics) in enumerate(test_metrics.items()):
        ci = (metrics.get("ci") or {}).get(metric) or {}
        out.append(Candidate(model=name, family=families[name], value=metrics.get(metric), ci_low=ci.get("lo"),
                             ci_high=ci.get("hi"), accuracy=metrics.get("accuracy"), order=order))
    return out


def _describe(c: Candidate, metric: str, level: int) -> str:
    value = "undefined" if c.value is None else f"{c.value:.3f}"
    ci = "" if c.ci_low is None or c.ci_high is None else f" ({level}% CI {c.ci_low:.3f} to {c.ci_high:.3f})"
    return f"test {metric} {value}{ci}"


def choose_champion(pool: Sequence[Candidate], rule: Mapping[str, Any], ci_level: int = 95) -> Selection:
    """Apply the registry rule (module docstring) to ``pool``; a reason for every candidate."""
    metric = str(rule["metric"])
    families = set(rule["eligible_families"])
    floor = rule.get("min_ci_low")
    selection = Selection(champion=None)
    eligible = []
    for c in pool:
        if c.family not in families:
            selection.reasons[c.model] = (f"not eligible for champion: the {c.family} family does not take raw scans "
                                          f"(evaluate.registry.eligible_families: {sorted(families)}); {_describe(c, metric, ci_level)}")
        elif c.value is None:
            selection.reasons[c.model] = f"not eligible for champion: its test {metric} is undefined"
        elif floor is not None and (c.ci_low is None or c.ci_low <= float(floor)):
            selection.reasons[c.model] = (f"not eligible for champion: {_describe(c, metric, ci_level)}, the CI lower bound is "
                                          f"not above {float(floor):g} (evaluate.registry.min_ci_low)")
        else:
            eligible.append(c)
    ranked = sorted(eligible, key=lambda c: (-c.value, -(c.ci_low if c.ci_low is not None else -1.0),
                                             -(c.accuracy if c.accuracy is not None else -1.0), c.order))
    selection.ranking = [c.model for c in ranked]
    if not ranked:
        return selection
    best = ranked[0]
    selection.champion = best.model
    others = ", ".join(f"{c.model} {c.value:.3f}" for c in ranked[1:]) or "none"
    tied = [c.model for c in ranked[1:] if c.value == best.value]
    selection.reasons[best.model] = (
        f"champion: the highest {_describe(best, metric, ci_level)} of {len(ranked)} eligible models (others: {others})"
        + (f"; tied on {metric} with {', '.join(tied)}, chosen by CI lower bound, then accuracy, then declaration order" if tied else "")
        + f". Rule: evaluate.registry (eligible families {sorted(families)}, CI lower bound above {floor}, highest test {metric})."
    )
    for rank, c in enumerate(ranked[1:], start=2):
        selection.reasons[c.model] = f"challenger: ranked {rank} of {len(ranked)} eligible models, {_describe(c, metric, ci_level)}"
    return selection


def evaluated_card(model: Any, metrics: Mapping[str, Any], data_fingerprint: Mapping[str, Any], label_scheme: str,
                   selection: str | None, small_sample: int | None = None) -> ModelCard:
    """The full card of an evaluated model (``model``: an ``evaluation.models.TrainedModel``)."""
    card = ModelCard(
        model=model.name, family=model.family, input=MODEL_INPUTS.get(model.family, ""), label_scheme=label_scheme,
        classes=list(metrics.get("class_names") or model.class_names), data=fingerprint_fields(data_fingerprint),
        train_counts=training_counts(model.final_fit), test=test_summary(metrics), pretrained=model.pretrained,
        selection=selection,
    )
    if small_sample and card.test and card.test["n_scans"] < small_sample:
        card.limitations.append(f"Its test set holds {card.test['n_scans']} scans (under {small_sample}): "
                                "the CIs are wide and the comparisons with other models have little power.")
    return card


# ----------------------------------------------------------------------------- MLflow calls


def find_version(client: Any, name: str, run_id: str) -> str | None:
    """The version of registered model ``name`` that run ``run_id`` logged (the newest if several)."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def publish(client: Any, models: Mapping[str, Any], cards: Mapping[str, ModelCard], selection: Selection,
            rule: Mapping[str, Any], evaluation_run_id: str | None = None) -> dict[str, Any]:
    """Write each evaluated version's card, set the aliases and their reasons; return what was done.

    ``models``: the evaluated ``TrainedModel``s; a model without a registered version (tracking
    off, another store) is reported and left alone.
    """
    champion_alias, challenger_alias = CHAMPION, CHALLENGER
    record: dict[str, Any] = {"rule": dict(rule), "champion": None, "versions": {}, "skipped": {}}
    for name, model in models.items():
        registered, run_id = model.final_fit.get("registered_model_name"), model.final_fit.get("mlflow_run_id")
        version = find_version(client, registered, run_id) if registered and run_id else None
        if version is None:
            record["skipped"][name] = "no registered version logged by its final-fit run in this MLflow store"
            logger.warning("registry: %s has no registered version here (%s/%s): no card, no alias", name, registered, run_id)
            continue
        write_card(client, registered, version, cards[name])
        client.set_registered_model_tag(registered, PROJECT_TAG, PROJECT_TAG_VALUE)
        alias = champion_alias if name == selection.champion else challenger_alias
        client.set_registered_model_alias(registered, alias, version)
        client.set_model_version_tag(registered, version, f"{alias}_reason", selection.reasons.get(name, ""))
        if evaluation_run_id:
            client.set_model_version_tag(registered, version, "evaluation_run_id", evaluation_run_id)
        record["versions"][name] = {"registered_model_name": registered, "version": version, "alias": alias,
                                    "reason": selection.reasons.get(name, "")}
        if alias == champion_alias:
            record["champion"] = f"models:/{registered}@{champion_alias}"
    winner = record["versions"].get(selection.champion, {}).get("registered_model_name")
    for registered in client.search_registered_models(filter_string=f"tags.`{PROJECT_TAG}` = '{PROJECT_TAG_VALUE}'"):
        aliases = dict(registered.aliases or {})
        if registered.name != winner and champion_alias in aliases:
            client.delete_registered_model_alias(registered.name, champion_alias)  # one project champion
        if registered.name == winner and challenger_alias in aliases:
            client.delete_registered_model_alias(registered.name, challenger_alias)  # an older version of the champion
    if record["champion"] is None:
        logger.warning("registry: no model passed the champion rule (evaluate.registry): no model is champion now")
    return record
