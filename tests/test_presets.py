"""The dataset registry (cggmlib/presets.py): one entry per dataset, which the loaders agree with and every
other place reads (modalities, task kind and selection metric, the official number, results tables, presets)."""
import importlib

import pytest

from cggmlib import presets
from cggmlib.analysis import tables
from cggmlib.data import DATASETS, load_data
from cggmlib.data.mfeat import VIEWS
from cggmlib.errors import ConfigError
from cggmlib.repro import pipeline
from cggmlib.tasks import Classification, Regression, Segmentation


def test_every_loader_has_one_entry_and_its_modalities_are_the_loaders():
    assert set(presets.REGISTRY) == set(DATASETS)
    for name in ("food101", "brats2021", "mosi", "iemocap"):
        loader = importlib.import_module(f"cggmlib.data.{DATASETS[name]}")
        assert presets.facts(name).modalities == tuple(loader.MODALITIES), name
    assert presets.facts("mfeat").modalities == tuple(VIEWS)


@pytest.mark.parametrize("name", ["synthetic", "mfeat"])
def test_the_embedded_datasets_load_with_the_registered_modalities_task_and_selection(name):
    data = load_data(name, batch_size=64)
    facts = presets.facts(name)
    assert tuple(data.input_dims) == facts.modalities
    assert type(data.task) is Classification and facts.kind == "classification"
    assert data.task.select == facts.select == "acc" and facts.official_number == ("val", "acc")


def test_selection_follows_the_task_kind_and_the_official_number_is_the_released_scripts():
    assert [presets.facts(n).select for n in ("mosi", "brats2021", "iemocap")] == [
        Regression().select, Segmentation().select, Classification(4).select]
    assert presets.facts("food101").official_number == ("test", "acc")  # its "valid" loader is the test split
    assert presets.facts("mosi").official_number == ("val", "acc2")


def test_other_places_read_the_registry():
    assert presets.PAPER_DATASETS == pipeline.PAPER_DATASETS == ("food101", "brats2021", "mosi", "iemocap")
    assert pipeline.MODALITIES == {n: f.modalities for n, f in presets.REGISTRY.items()}
    assert tables.RESULTS == {"table2": [("food101", ("acc", "f1"))],
                              "table3": [("brats2021", ("dice_wt", "dice_tc", "dice_et", "dice_mean"))],
                              "table4": [("mosi", ("acc2", "acc7", "f1", "mae", "corr")), ("iemocap", ("acc", "f1"))]}
    assert pipeline.not_applicable("pmr", "mosi") and pipeline.not_applicable("pmr", "iemocap") is None
    assert presets.train_kwargs("mosi", "paper") == presets.REGISTRY["mosi"].train["paper"]
    assert presets.cggm_kwargs("food101", "paper")["lam"] == 0.05


def test_unknown_names_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; choose from"):
        presets.facts("cifar")
    with pytest.raises(ConfigError, match="no training preset for dataset 'cifar'"):
        presets.train_kwargs("cifar")
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        presets.model_kwargs("mosi", "huge")


def test_the_benchmark_and_cost_table_read_the_real_shapes_from_the_registry():
    """bench's paper-size inputs: the registry's per-sample shapes, task and paper batch (one home per fact)."""
    from cggmlib.bench.runner import CASES

    for name in presets.PAPER_DATASETS:
        facts, case = presets.facts(name), CASES["paper"][name]
        assert case.shapes == facts.shapes and tuple(facts.shapes) == facts.modalities, name
        assert type(case.task) is type(facts.new_task()) and case.task.kind == facts.kind, name
        assert getattr(case.task, "num_classes", 0) == facts.classes, name
    assert CASES["paper"]["mosi"].batch_size == presets.train_kwargs("mosi", "paper")["batch_size"]
    assert CASES["reduced"]["iemocap"].shapes["audio"] == (50, 130)  # shorter sequences, the same features
    assert presets.facts("mosi").new_task() == Regression()
