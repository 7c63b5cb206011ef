import json

import pytest

from prunelab.config import config_id, from_dict, to_json
from prunelab.models import ModelConfig
from prunelab.prune import PruneMethod
from prunelab.study import RECIPES, StudyConfig, load_config
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
    assert len(config_id("x")) == 16 and json.dumps(config_id(a)) == json.dumps(config_id(a))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": (1.5,)}, r"k must be in \[0, 1\)"),
        ({"ks": (-0.1,)}, r"k must be in \[0, 1\)"),
        ({"methods": ("nonsense",)}, "unknown structure"),
        ({"dataset": "nonsense"}, "unknown dataset"),
        ({"methods": ()}, "at least one method"),
        ({"train_limit": 0}, "train_limit must be positive"),
    ],
)
def test_invalid_study_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kwargs)
