"""evaluate's registry node on a real SQLite MLflow store: every evaluated version gets its model
card (description and tags, read back from the store), the champion rule's winner gets
``champion``, the others ``challenger``, each with its reason; one project champion at a time."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from osteo_pipeline.evaluation import registry
from osteo_pipeline.evaluation.models import TrainedModel
from osteo_pipeline.pipelines.evaluate.nodes import compute_test_metrics, update_model_registry
from osteo_pipeline.serving.card import NOT_FOR_CLINICAL_USE
from osteo_pipeline.serving.preprocessing import preprocessing_settings
from osteo_pipeline.serving.registry import NoChampionError, project_champion
from osteo_pipeline.training import tracking

CLASSES = ["normal", "osteoporosis"]
RULE = {"metric": "auc", "min_ci_low": 0.5, "eligible_families": ["cnn21", "transfer"]}
PARAMS = {"registry": RULE, "bootstrap": {"n_boot": 200, "alpha": 0.05}, "small_sample": {"scans": 100}}
FINGERPRINT = {"manifest_sha256": "3f" * 32, "split_seed": 42, "n_scans": 120, "n_patients": 60,
               "views": {"studied": ["AP"], "n_split_by_view": {"AP": 120}, "n_left_out_by_view": {"AP": 0}}}
FAMILIES = {"cnn21": "cnn21", "vgg16": "transfer", "svm": "classical"}
PATIENTS = [f"PAT-{i:04d}" for i in range(40)]  # what must never reach the registry


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A fresh SQLite store (artifacts beside it) with CNN21, VGG16 and the SVM registered once:
    each test's evaluations reset the aliases of all three."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)  # the store's artifacts land here
        mlflow.set_tracking_uri(uri)
        store = mlflow.MlflowClient()
        store.final_fits = {name: register(name)[1] for name in FAMILIES}
        yield store
        while mlflow.active_run():
            mlflow.end_run()


def register(name: str) -> tuple[str, dict]:
    """Train-time registration of one model of ``FAMILIES`` as the training loops do it: a
    final-fit run with the data tags, the model logged by ``tracking``; its final-fit report."""
    import mlflow

    with mlflow.start_run(run_name=f"{name}-final", tags=tracking.fingerprint_tags(FINGERPRINT)) as run:
        mlflow.log_param("label_scheme", "binary")
        if FAMILIES[name] == "classical":
            images = np.random.default_rng(0).integers(0, 255, (8, 4, 4), dtype=np.uint8)
            model = LogisticRegression().fit(images.reshape(8, -1), [0, 1] * 4)
            tracking.log_sklearn_model(model, CLASSES, f"osteo-{name}", images.reshape(8, -1)[:1])
        else:
            inputs = keras.Input((32, 32, 3))
            network = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)))
            settings = preprocessing_settings({"margin": 0.05, "low_percentile": 1.0, "high_percentile": 99.0},
                                              {"max_pixels": 50_000_000,
                                               "degenerate": {"min_side": 16, "max_aspect": 8, "min_dynamic_range": 0.05}})
            tracking.log_keras_model(network, CLASSES, f"osteo-{name}", settings)
    return run.info.run_id, {"registered_model_name": f"osteo-{name}", "mlflow_run_id": run.info.run_id,
                             "class_names": CLASSES, "n_training_scans": 84, "n_training_patients": 42,
                             "class_counts": {"normal": 34, "osteoporosis": 50}}


def trained(final_fits: dict[str, dict]) -> dict[str, TrainedModel]:
    return {n: TrainedModel(name=n, family=FAMILIES[n], model=None, final_fit=f,
                            baseline_info={"pretrained": False} if FAMILIES[n] == "transfer" else None)
            for n, f in final_fits.items()}


def metrics(skill: dict[str, float]) -> dict:
    """evaluate's own test metrics of predictions whose separation is ``skill`` per model."""
    rng = np.random.default_rng(7)
    labels = np.array([0, 1] * 20)
    rows = []
    for model, s in skill.items():
        p = np.clip(0.5 + s * (labels - 0.5) + rng.normal(0, 0.4, labels.size), 0.01, 0.99)
        rows.append(pd.DataFrame({"model": model, "scan_id": [f"s{i:03d}" for i in range(40)], "patient_id": PATIENTS,
                                  "label": np.asarray(CLASSES)[labels], "p_normal": 1 - p, "p_osteoporosis": p}))
    return compute_test_metrics(pd.concat(rows, ignore_index=True), "binary", PARAMS, seed=1)


def test_evaluate_writes_a_card_on_every_version_and_one_champion(client):
    models = trained(client.final_fits)
    test_metrics = metrics({"cnn21": 0.3, "vgg16": 0.9, "svm": 1.2})  # svm best, but it takes no raw scans
    done = update_model_registry(models, test_metrics, FINGERPRINT, "binary", PARAMS)

    assert done["champion"] == "models:/osteo-vgg16@champion"
    assert project_champion(client) == "models:/osteo-vgg16@champion"
    assert client.get_registered_model("osteo-vgg16").aliases == {"champion": 1}
    assert client.get_registered_model("osteo-cnn21").aliases == {"challenger": 1}
    assert client.get_registered_model("osteo-svm").aliases == {"challenger": 1}
    champion = client.get_model_version_by_alias("osteo-vgg16", "champion")
    assert champion.tags["champion_reason"].startswith(f"champion: the highest test auc {test_metrics['vgg16']['auc']:.3f}")
    assert "not eligible for champion: the classical family does not take raw scans" in \
        client.get_model_version("osteo-svm", "1").tags["challenger_reason"]

    for name, family in FAMILIES.items():
        version = client.get_model_version(f"osteo-{name}", "1")
        tags, text = version.tags, version.description
        auc = test_metrics[name]["auc"]
        lo, hi = (test_metrics[name]["ci"]["auc"][k] for k in ("lo", "hi"))
        assert tags["card.status"] == "evaluated" and tags["clinical_use"] == "not for clinical use"
        assert tags["test.auc"] == f"{auc:.3f} ({lo:.3f} to {hi:.3f})"
        assert json.loads(tags["test.class_counts"]) == {"normal": 20, "osteoporosis": 20}
        assert json.loads(tags["train.class_counts"]) == {"normal": 34, "osteoporosis": 50}
        assert tags["data.fingerprint"] == FINGERPRINT["manifest_sha256"][:12] and tags["data.split_seed"] == "42"
        assert tags["label_scheme"] == "binary" and tags["classes"] == "normal,osteoporosis"
        assert tags["pretrained"] == ("false" if family == "transfer" else "n/a")
        assert NOT_FOR_CLINICAL_USE in text and "## Intended use" in text and "## Known limitations" in text
        assert f"| auc | {auc:.3f} ({lo:.3f} to {hi:.3f}) |" in text
        assert "40 scans of 40 patients (normal 20, osteoporosis 20); 95% CIs by patient bootstrap" in text
        assert "(under 100): the CIs are wide" in text
        assert ("random weights" in text) == (family == "transfer")
        shown = text + json.dumps(tags)
        assert not any(p in shown for p in PATIENTS) and "s001" not in shown  # no patient or scan ids


def test_the_champion_moves_and_stays_unique_and_no_winner_means_no_champion(client):
    models = trained(client.final_fits)
    update_model_registry(models, metrics({"cnn21": 0.3, "vgg16": 0.9, "svm": 0.5}), FINGERPRINT, "binary", PARAMS)
    assert project_champion(client) == "models:/osteo-vgg16@champion"

    # a retrained CNN21 (version 2): training writes the card it can; evaluated, it is the best
    # and takes the champion alias from VGG16
    _, retrained = register("cnn21")
    fresh = client.get_model_version("osteo-cnn21", "2")
    assert fresh.tags["card.status"] == "registered" and fresh.tags["data.n_patients"] == "60"
    assert fresh.tags["label_scheme"] == "binary" and "test.auc" not in fresh.tags
    assert NOT_FOR_CLINICAL_USE in fresh.description and "Not evaluated yet" in fresh.description
    models["cnn21"] = trained({"cnn21": retrained})["cnn21"]
    update_model_registry(models, metrics({"cnn21": 1.2, "vgg16": 0.5, "svm": 0.5}), FINGERPRINT, "binary", PARAMS)
    assert client.get_registered_model("osteo-cnn21").aliases == {"champion": 2}  # its old challenger alias is gone
    assert client.get_registered_model("osteo-vgg16").aliases == {"challenger": 1}
    assert project_champion(client) == "models:/osteo-cnn21@champion"
    assert client.get_model_version("osteo-cnn21", "1").aliases == []  # the old version keeps its card, no alias

    # no image model better than chance: nobody is champion, and serving by default says why
    done = update_model_registry(models, metrics({"cnn21": -0.5, "vgg16": -0.5, "svm": 1.0}), FINGERPRINT, "binary", PARAMS)
    assert done["champion"] is None
    assert all("champion" not in client.get_registered_model(f"osteo-{n}").aliases for n in FAMILIES)
    with pytest.raises(NoChampionError, match="no registered model of this project is champion"):
        project_champion(client)
    assert "CI lower bound is not above 0.5" in client.get_model_version("osteo-cnn21", "2").tags["challenger_reason"]


def candidate(model: str, value: float | None, lo: float | None, accuracy: float = 0.8, family: str = "cnn21",
              order: int = 0) -> registry.Candidate:
    return registry.Candidate(model=model, family=family, value=value, ci_low=lo, ci_high=None, accuracy=accuracy, order=order)


def test_the_rule_breaks_ties_by_ci_lower_bound_then_accuracy_then_declaration_order():
    pick = lambda *pool: registry.choose_champion(pool, RULE).champion  # noqa: E731
    assert pick(candidate("a", 0.9, 0.6), candidate("b", 0.9, 0.7, order=1)) == "b"
    assert pick(candidate("a", 0.9, 0.7, 0.7), candidate("b", 0.9, 0.7, 0.8, order=1)) == "b"
    assert pick(candidate("a", 0.9, 0.7), candidate("b", 0.9, 0.7, order=1)) == "a"
    assert pick(candidate("a", 0.8, 0.7), candidate("b", 0.9, 0.5, order=1)) == "a"  # b's CI reaches chance
    assert pick(candidate("a", None, None), candidate("b", 0.99, 0.9, family="fusion", order=1)) is None
    assert registry.choose_champion([candidate("a", 0.8, 0.4)], {**RULE, "min_ci_low": None}).champion == "a"
