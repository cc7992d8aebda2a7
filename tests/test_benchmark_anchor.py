"""The strong anchor (scripts/benchmarks/anchor.py) trains exactly what seqmodels trains: run
beside ``train(cfg)`` on the same batches from the same weights (no dropout), it ends with
Lightning's weights, its moving average included, and the char LM's carried state; and its
step reads nothing back from the device (no data-dependent op a GPU would wait on)."""

import random
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from seqmodels.cli.train import train
from tests.conftest import compose_config, write_lines

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(SCRIPTS / "device_check"))
from checks import HostReads  # noqa: E402  (the device check's counter of host reads)

import plain_loops as pl  # noqa: E402
from benchmarks.anchor import AnchorSpec, StrongAnchor  # noqa: E402

NO_DROPOUT = ["model.dropout=0.0", "model.embedding_dropout=0.0"]


@pytest.fixture
def tiny_sst(tmp_path) -> list[str]:
    rng = random.Random(0)
    words = ["good", "bad", "film", "plot", "not", "fun", "dull", "the", "a"]
    lines = [f"{rng.randint(0, 1)} " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))
             for _ in range(60)]
    train_file = write_lines(tmp_path / "data" / "train.txt", lines[:48])
    val_file = write_lines(tmp_path / "data" / "val.txt", lines[48:])
    return ["data=text_classification", f"data.train_path={train_file}",
            f"data.val_path={val_file}", "data.batch_size=8", "model.embedding_dim=8",
            "model.encoder.hidden_size=8", "model.word_dropout=0.0", *NO_DROPOUT]


def beside_lightning(cfg) -> tuple[object, StrongAnchor]:
    pl.PLANS["anchor_test"] = plan = {"cfg": cfg, "specs": [AnchorSpec("anchor")]}
    with open_dict(cfg):
        cfg.callbacks = {**(cfg.callbacks or {}),
                         "shadow": {"_target_": "plain_loops.ShadowArms", "plan": "anchor_test"}}
    _, objects = train(cfg)
    framework, anchor = plan["arms"]
    assert framework.model is objects["model"]
    assert [m.batches for m in framework.epochs] == [m.batches for m in anchor.epochs]
    assert framework.epochs[0].tokens == anchor.epochs[0].tokens
    return objects["model"], anchor


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=name)


def test_the_anchor_ends_with_lightnings_averaged_weights_adversarial_pass_included(tmp_path,
                                                                                   tiny_sst):
    cfg = compose_config(tmp_path, [*tiny_sst, "trainer.max_epochs=1", "test=false",
                                    "model.adversarial_epsilon=1.0", "callbacks=weight_averaging",
                                    "callbacks.weight_averaging.multi_avg_fn.decay=0.5"])
    module, anchor = beside_lightning(cfg)
    trained = {k: v for k, v in anchor.model.state_dict().items() if v.is_floating_point()}
    assert not torch.allclose(trained["classifier.weight"], anchor.averaged_state()[
        "classifier.weight"])  # the average is not simply the last weights
    # Lightning's WeightAveraging ends the fit on the average: the anchor's must match it.
    lightning = {k: v for k, v in module.net.state_dict().items() if v.is_floating_point()}
    assert_same(lightning, anchor.averaged_state())


def test_the_anchor_carries_the_char_lm_state_as_lightning_does(tmp_path, monkeypatch):
    from tests.tiny_datasets import write_named_datasets

    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    cfg = compose_config(tmp_path, ["experiment=shakespeare_char", "trainer=cpu",
                                    "trainer.max_epochs=1", "++trainer.limit_train_batches=4",
                                    "++trainer.limit_val_batches=1", "test=false",
                                    "model.scheduler=null", "model.encoder.hidden_size=16",
                                    "model.embedding_dim=8", "model.encoder.dropout=0.0",
                                    "data.batch_size=4", "data.bptt=16", "model.dropout=0.0"])
    module, anchor = beside_lightning(cfg)
    assert_same(module.net.state_dict(), anchor.model.state_dict())


def test_an_anchor_step_reads_nothing_back(tmp_path, tiny_sst):
    cfg = compose_config(tmp_path, [*tiny_sst, "model.adversarial_epsilon=1.0",
                                    "callbacks=weight_averaging"])
    from seqmodels.cli.train import build_data_and_model

    datamodule, module = build_data_and_model(cfg)
    datamodule.setup("fit")
    anchor = StrongAnchor("anchor", module.net, cfg, pl.epoch_loader(datamodule),
                          torch.device("cpu"))
    batches = anchor.prebuild(0, 3)
    anchor.step(batches[0][0], None)  # the first update copies the weights into the average
    with HostReads() as reads:
        for batch, _ in batches[1:]:
            anchor.step(batch, None)
    assert not reads.places, dict(reads.places)
    assert anchor.updates == 3


def test_the_anchor_refuses_a_precision_it_does_not_run_in_one_line(tmp_path, tiny_sst):
    cfg = compose_config(tmp_path, [*tiny_sst, "trainer.precision=16-mixed"])
    with pytest.raises(ValueError, match="runs .* not '16-mixed'"):
        StrongAnchor("anchor", torch.nn.Linear(2, 2), cfg, None, torch.device("cpu"))
