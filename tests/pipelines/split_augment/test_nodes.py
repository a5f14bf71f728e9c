import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.core.leakage import LeakageError, assert_not_in_partition, assert_patients_disjoint
from osteo_pipeline.pipelines.split_augment.nodes import (
    SplitError,
    augmentation_policy,
    class_weights,
    data_fingerprint,
    split_patients,
)

PARAMS = {"test_size": 0.3, "val_size": 0.0, "n_folds": 5, "views": "auto"}


def make_manifest(n_normal=60, n_osteoporosis=114, n_osteopenia=0, repeat_every=8, seed=0):
    """A manifest shaped like the paper's cohort; every `repeat_every`-th patient has two scans."""
    rows, pid = [], 0
    for label, n in [("normal", n_normal), ("osteoporosis", n_osteoporosis), ("osteopenia", n_osteopenia)]:
        made = 0
        while made < n:
            pid += 1
            for _ in range(2 if pid % repeat_every == 0 and made + 1 < n else 1):
                rows.append({"scan_id": f"{len(rows):064x}", "patient_id": f"pt-{pid:04d}", "label": label})
                made += 1
    return pd.DataFrame(rows).sample(frac=1, random_state=seed).reset_index(drop=True)


def test_split_is_patient_grouped_stratified_and_70_30():
    manifest = make_manifest()
    table = split_patients(manifest, PARAMS, seed=42)
    assert len(table) == len(manifest)
    assert table.groupby("patient_id")["partition"].nunique().max() == 1
    train = table[table.partition == "train"]
    assert train.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(train.fold.unique()) == [0, 1, 2, 3, 4]
    assert (table.loc[table.partition == "test", "fold"] == -1).all()
    test_frac = (table.partition == "test").mean()
    assert 0.26 < test_frac < 0.34
    # stratified: the normal share is close in both partitions (60/174 = 0.345)
    for part in ("train", "test"):
        share = (table[table.partition == part].label == "normal").mean()
        assert abs(share - 60 / 174) < 0.05
    # every fold holds both classes
    assert (train.groupby("fold")["label"].nunique() == 2).all()


def test_split_is_seeded():
    manifest = make_manifest()
    a, b = split_patients(manifest, PARAMS, 42), split_patients(manifest, PARAMS, 42)
    pd.testing.assert_frame_equal(a, b)
    c = split_patients(manifest, PARAMS, 7)
    assert not a.set_index("scan_id").partition.equals(c.set_index("scan_id").loc[a.scan_id].partition)


def test_train_val_test_variant():
    table = split_patients(make_manifest(n_osteopenia=40), {"test_size": 0.15, "val_size": 0.15, "n_folds": 5, "views": "auto"}, 1)
    fractions = table.partition.value_counts(normalize=True)
    assert set(fractions.index) == {"train", "val", "test"}
    assert 0.11 < fractions["val"] < 0.19 and 0.11 < fractions["test"] < 0.19
    assert table.groupby("patient_id")["partition"].nunique().max() == 1


def test_too_few_patients_names_class_and_counts():
    manifest = make_manifest(n_normal=5, n_osteoporosis=40, repeat_every=1000)
    with pytest.raises(SplitError, match=r"normal: 3 patient\(s\)"):
        split_patients(manifest, PARAMS, 42)


def test_leakage_guards_raise():
    table = split_patients(make_manifest(), PARAMS, 42)
    broken = table.copy()
    test_patient = broken.loc[broken.partition == "test", "patient_id"].iloc[0]
    broken.loc[broken.index[broken.partition == "train"][0], "patient_id"] = test_patient
    with pytest.raises(LeakageError):
        assert_patients_disjoint(broken)
    with pytest.raises(LeakageError):
        assert_not_in_partition(table.loc[table.partition == "test", "scan_id"][:1], table)
    assert_not_in_partition(table.loc[table.partition == "train", "scan_id"], table)


def test_class_weights_favour_minority_per_scheme():
    table = split_patients(make_manifest(n_osteopenia=30), PARAMS, 42)
    w = class_weights(table)
    assert w["binary"]["normal"] > 1 > w["binary"]["osteoporosis"]
    assert set(w["three_class"]) == {"normal", "osteopenia", "osteoporosis"}
    train = table[(table.partition == "train") & table.label.isin(["normal", "osteoporosis"])]
    # balanced weights: weight x count is the same for each class
    totals = [w["binary"][c] * (train.label == c).sum() for c in ("normal", "osteoporosis")]
    assert np.isclose(*totals)


def test_augmentation_policy_reads_table3_fractions():
    params = {"rotation_deg": 40, "width_shift": 0.2, "height_shift": 0.2, "shear": 0.2, "zoom": 0.2,
              "horizontal_flip": True, "vertical_flip": False}
    policy = augmentation_policy(params, 42)
    assert policy["rotation_deg"] == 40 and policy["zoom"] == 0.2 and policy["seed"] == 42
    with pytest.raises(ValueError, match="width_shift"):
        augmentation_policy({**params, "width_shift": 20}, 42)


def test_fingerprint_changes_with_data():
    manifest = make_manifest()
    table = split_patients(manifest, PARAMS, 42)
    fp = data_fingerprint(manifest, table, 42)
    assert fp["n_scans"] == 174 and fp["split_seed"] == 42
    fewer = manifest.iloc[1:]
    assert data_fingerprint(fewer, split_patients(fewer, PARAMS, 42), 42)["manifest_sha256"] != fp["manifest_sha256"]


def test_the_split_does_not_depend_on_the_pseudonym_key():
    """Same scans, same seed, pseudonyms under two different keys: the same scans in the same partitions and folds."""
    from osteo_pipeline.pipelines.ingest.privacy import pseudonymise
    from osteo_pipeline.pipelines.split_augment.nodes import split_patients

    rng = np.random.default_rng(3)
    rows = [{"scan_id": f"{rng.integers(0, 2**63):016x}", "patient": f"p{p}", "label": label}
            for p, label in enumerate(["normal"] * 14 + ["osteoporosis"] * 16) for _ in range(1 + p % 2)]
    tables = []
    for key in ("one-key", "another-key"):
        manifest = pd.DataFrame(rows).assign(patient_id=lambda m, k=key: m["patient"].map(lambda p: pseudonymise(p, k)))
        split = split_patients(manifest.drop(columns="patient"), {"n_folds": 3, "test_size": 0.3, "views": "auto"}, seed=42)
        tables.append(split.set_index("scan_id")[["partition", "fold"]].sort_index())
    pd.testing.assert_frame_equal(tables[0], tables[1])


def _with_views(manifest: pd.DataFrame, lateral_every: int = 3) -> pd.DataFrame:
    """Every ``lateral_every``-th patient's scans are lateral, the others AP."""
    number = manifest["patient_id"].str[3:].astype(int)
    return manifest.assign(view=np.where(number % lateral_every == 0, "lateral", "AP"))


def test_views_auto_keeps_ap_and_counts_the_lateral_scans_left_out(caplog):
    manifest = _with_views(make_manifest())
    caplog.set_level("INFO")
    table = split_patients(manifest, PARAMS, 42)
    n_lateral = int((manifest["view"] == "lateral").sum())
    assert set(table["view"]) == {"AP"} and len(table) == len(manifest) - n_lateral
    assert f"{n_lateral} scan(s) of other views left out" in caplog.text
    fp = data_fingerprint(manifest, table, 42)
    assert fp["views"] == {"studied": ["AP"], "n_split_by_view": {"AP": len(table), "lateral": 0},
                           "n_left_out_by_view": {"AP": 0, "lateral": n_lateral}}
    only_lateral = manifest[manifest["view"] == "lateral"]
    assert set(split_patients(only_lateral, {**PARAMS, "n_folds": 3}, 42)["view"]) == {"lateral"}  # auto: what there is


def test_several_views_are_stratified_by_label_and_view():
    manifest = _with_views(make_manifest(n_normal=90, n_osteoporosis=120))
    table = split_patients(manifest, {**PARAMS, "views": ["AP", "lateral"]}, 42)
    assert len(table) == len(manifest)
    assert_patients_disjoint(table)
    overall = (manifest["view"] == "lateral").mean()
    for part in ("train", "test"):
        assert abs((table.loc[table.partition == part, "view"] == "lateral").mean() - overall) < 0.05
    train = table[table.partition == "train"]
    assert (train.groupby("fold")["view"].nunique() == 2).all()
    with pytest.raises(ValueError, match="split.views"):
        split_patients(manifest, {**PARAMS, "views": ["oblique"]}, 42)
