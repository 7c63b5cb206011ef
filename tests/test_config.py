import dataclasses
import json

import pytest

from prunelab.config import canonical, config_id, from_dict, to_json
from prunelab.models import ModelConfig
from prunelab.prune import PruneMethod
from prunelab.study_config import RECIPES, StudyConfig, load_config
from prunelab.train import TrainConfig


@pytest.mark.parametrize("config", list(RECIPES.values()))
def test_study_config_round_trips_through_json(config, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(to_json(config))
    assert load_config(path) == config


def test_unknown_config_keys_are_refused():
    with pytest.raises(ValueError, match="unknown StudyConfig keys: colour"):
        from_dict(StudyConfig, {"colour": "blue"})


def test_ids_depend_on_what_is_computed_only():
    a = StudyConfig()
    assert a.base_id() == StudyConfig().base_id()
    assert a.base_id() != StudyConfig(seed=1).base_id()
    assert a.base_id() != StudyConfig(model=ModelConfig(hidden=(10,))).base_id()
    # the grid does not change the base model, the fine-tuning recipe changes the cells
    assert a.base_id() == StudyConfig(ks=(0.5,)).base_id()
    b = StudyConfig(finetune=TrainConfig(epochs=2))
    weight = PruneMethod("weight")
    assert a.cell_id(weight, 0.5) != b.cell_id(weight, 0.5)
    assert a.cell_id(weight, 0.5) != a.cell_id(weight, 0.9)
    assert len(config_id("x")) == 16


def test_ids_are_pinned():
    """Every run directory is addressed by these; a change to how ids are computed
    orphans all finished work, so it must be deliberate (and migrated)."""
    assert StudyConfig().base_id() == "eb3130f2e3c47bd5"
    assert StudyConfig().cell_id(PruneMethod("unit", "obd"), 0.9) == "5719e103a87acb7c"


def test_ids_hash_only_settings_that_differ_from_their_defaults():
    assert canonical(StudyConfig()) == {}
    changed = StudyConfig(train=TrainConfig(epochs=3), methods=("unit",))
    assert canonical(changed) == {"train": {"epochs": 3}, "methods": ["unit"]}
    # a default given explicitly is the default
    assert StudyConfig(train=TrainConfig(lr=1e-3)).base_id() == StudyConfig().base_id()


def test_adding_a_nested_setting_with_a_default_keeps_every_id():
    """A TrainConfig that has grown a field, as a later release might."""
    grown = dataclasses.make_dataclass(
        "TrainConfig", [("label_smoothing", float, 0.0)], bases=(TrainConfig,), frozen=True
    )
    old = StudyConfig(train=TrainConfig(epochs=3))
    new = StudyConfig(train=grown(epochs=3))
    method = PruneMethod("weight", "obd")
    assert new.base_id() == old.base_id() and new.cell_id(method, 0.5) == old.cell_id(method, 0.5)
    assert StudyConfig(train=grown(epochs=3, label_smoothing=0.1)).base_id() != old.base_id()


def test_a_config_json_missing_newer_settings_reads_with_their_defaults(tmp_path):
    data = json.loads(to_json(StudyConfig()))
    del data["train"]["augment"], data["calibration_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**data, "provenance": {"torch": "2.13.0"}}))
    assert load_config(path) == StudyConfig()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": (1.5,)}, r"k must be in \[0, 1\)"),
        ({"ks": (-0.1,)}, r"k must be in \[0, 1\)"),
        ({"methods": ("nonsense",)}, "unknown structure"),
        ({"dataset": "nonsense"}, "unknown dataset"),
        ({"methods": ()}, "at least one method"),
        ({"train_limit": 0}, "`train_limit` must be positive"),
    ],
)
def test_invalid_study_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kwargs)
