"""Every config composes, with and without typical overrides, and every experiment builds its
datamodule and model; bad options are refused by Hydra or by name, before training."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from seqmodels.cli.train import build_data_and_model
from seqmodels.config import config_dir
from seqmodels.errors import ConfigError
from tests.conftest import compose_config, write_lines

CONFIGS = Path(config_dir())
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
GROUP_CHOICES = [
    (group, path.stem)
    for group in ("data", "model", "trainer", "callbacks", "logger", "debug")
    for path in sorted((CONFIGS / group).glob("*.yaml"))
]


def tiny_classification_files(tmp_path: Path) -> list[str]:
    lines = ["1 good fun", "0 bad dull", "1 nice", "0 awful"] * 4
    train = write_lines(tmp_path / "train.txt", lines)
    return [f"data.train_path={train}", f"data.val_path={train}", f"data.test_path={train}"]


def leaves(node, prefix: tuple = ()):
    """(key path, value) of every leaf of a plain container (an empty mapping is a leaf, but
    for the whole file's)."""
    if isinstance(node, dict) and (node or not prefix):
        for key, value in node.items():
            yield from leaves(value, (*prefix, key))
    else:
        yield prefix, node


@pytest.mark.parametrize("group,choice", GROUP_CHOICES)
def test_every_group_option_composes(tmp_path, group, choice):
    """The option is chosen, and every value its file sets is in the composed config where the
    file's package puts it (the group's node, or the root for ``@package _global_``)."""
    cfg = compose_config(tmp_path, [f"{group}={choice}"])
    assert cfg.hydra.runtime.choices[group] == choice
    path = CONFIGS / group / f"{choice}.yaml"
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    own.pop("defaults", None)
    is_global = "@package _global_" in path.read_text(encoding="utf-8").splitlines()[0]
    composed = OmegaConf.to_container(cfg if is_global else cfg[group], resolve=False)
    found = 0
    for keys, value in leaves(own):
        node = composed
        for key in keys:
            node = node[key]
        assert node == value, (".".join(map(str, keys)), node, value)
        found += 1
    assert found or own == {}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(tmp_path, experiment):
    cfg = compose_config(tmp_path, [f"experiment={experiment}", "debug=fdr"])
    assert cfg.data._target_ and cfg.model._target_


@pytest.mark.parametrize("config_name", ["train", "eval"])
def test_top_level_configs_compose(tmp_path, config_name):
    overrides = ["ckpt_path=x.ckpt"] if config_name == "eval" else []
    assert compose_config(tmp_path, overrides, config_name=config_name).task_name == config_name


def test_typical_overrides_reach_the_objects(tmp_path):
    cfg = compose_config(tmp_path, [
        "model/encoder=gru", "model.encoder.num_layers=2", "model.encoder.combine=sum",
        "model.optimizer.lr=0.01", "data.batch_size=4", "trainer.max_epochs=3",
        *tiny_classification_files(tmp_path),
    ])
    datamodule, model = build_data_and_model(cfg)
    assert model.encoder.cell == "gru" and model.encoder.num_layers == 2
    assert model.encoder.get_output_dim() == cfg.model.encoder.hidden_size
    assert datamodule.batch_size == 4
    assert model.configure_optimizers().param_groups[0]["lr"] == 0.01
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == 3


def test_default_sst2_experiment_instantiates_on_real_data(tmp_path):
    data_dir = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data_dir / "sst2").is_dir():
        pytest.skip("shared SST-2 copy not present")
    cfg = compose_config(tmp_path, ["experiment=sst2_bilstm", f"paths.data_dir={data_dir}"])
    datamodule, model = build_data_and_model(cfg)
    assert datamodule.num_classes == 2 and len(datamodule.splits["train"]) == 6920
    assert model.encoder.num_directions == 2


def test_unknown_key_and_option_are_hydra_errors(tmp_path):
    with pytest.raises(ConfigCompositionException):
        compose_config(tmp_path, ["model.encoder.no_such_key=1"])
    with pytest.raises(ConfigCompositionException):
        compose_config(tmp_path, ["model/encoder=no_such_encoder"])


@pytest.mark.parametrize("override,field", [
    ("model.encoder.cell=xyz", "model.encoder.cell"),
    ("model.encoder.combine=xyz", "model.encoder.combine"),
    ("model.encoder.hidden_size=0", "model.encoder.hidden_size"),
    ("model.encoder.dropout=1.5", "model.encoder.dropout"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.pooling=xyz", "model.pooling"),
])
def test_invalid_model_options_are_refused_before_training(tmp_path, override, field):
    cfg = compose_config(tmp_path, [override, *tiny_classification_files(tmp_path)])
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build_data_and_model(cfg)


def test_wrong_type_is_refused(tmp_path):
    cfg = compose_config(tmp_path, tiny_classification_files(tmp_path))
    with open_dict(cfg):
        cfg.model.encoder.hidden_size = "big"
    with pytest.raises(ConfigError, match="hidden_size must be a positive integer"):
        build_data_and_model(cfg)


@pytest.mark.parametrize("preset,cell,bidirectional", [
    ("rnn", "rnn", False), ("lstm", "lstm", False), ("gru", "gru", False),
    ("bilstm", "lstm", True), ("bigru", "gru", True)])
def test_encoder_presets_are_what_their_names_say(tmp_path, preset, cell, bidirectional):
    encoder = compose_config(tmp_path, [f"model/encoder={preset}"]).model.encoder
    assert (encoder.cell, encoder.bidirectional) == (cell, bidirectional)
