"""The character language model: TBPTT state carrying, generation, refusing a bidirectional
encoder, prompts with unknown characters, and the train -> generate command line."""

import functools
import io
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

from seqmodels.cli.eval import load_model
from seqmodels.cli.generate import generate_text
from seqmodels.cli.train import build_data_and_model, train
from seqmodels.data.text import CharTextDataModule
from seqmodels.data.vocab import UNK_ID, Vocab
from seqmodels.errors import ConfigError
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.sampling import FusedLSTMStepper, RecurrentStepper, make_stepper
from tests.conftest import compose_config, run_cli

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\n"
        "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n\n") * 12
TRAIN_TEXT = TEXT[: len(TEXT) - round(len(TEXT) * 0.1)]  # the datamodule's default split
TINY_ENCODER = {"cell": "lstm", "hidden_size": 16, "num_layers": 2}


def tiny_model(cell="lstm", carry_state=True, num_layers=2, **kwargs) -> CharLanguageModel:
    torch.manual_seed(0)
    vocab = Vocab.build([TRAIN_TEXT])  # the datamodule's vocabulary
    encoder = {**TINY_ENCODER, "cell": cell, "num_layers": num_layers}
    model = CharLanguageModel(len(vocab), encoder, embedding_dim=8,
                              carry_state=carry_state, **kwargs)
    model.vocabs = {"chars": vocab}
    return model


@pytest.fixture(scope="module")
def context_weights() -> dict:
    """A tiny LSTM trained for a moment on TEXT, so that its predictions lean on the context
    (an untrained model's loss hardly changes with the state, and would prove nothing)."""
    model = tiny_model()
    ids = torch.tensor(model.vocabs["chars"].encode(TEXT))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - 33, (8,), generator=generator)
        window = torch.stack([ids[s : s + 33] for s in starts.tolist()])  # (8, 33)
        logits, _ = model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def trained_model(weights, **kwargs) -> CharLanguageModel:
    model = tiny_model(**kwargs)
    model.load_state_dict(weights)
    return model


def tiny_datamodule(tmp_path, **kwargs) -> CharTextDataModule:
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    dm = CharTextDataModule(str(path), **{"batch_size": 3, "bptt": 16, **kwargs})
    dm.setup("fit")
    assert dm.vocabs["chars"] == Vocab.build([TRAIN_TEXT])
    return dm


def one_pass_loss(model, tracks) -> float:
    """Mean loss of one forward pass over whole tracks (B, L+1), from a zero state."""
    model.eval()
    with torch.no_grad():
        logits, _ = model(tracks[:, :-1])
    return float(F.cross_entropy(logits.flatten(0, 1), tracks[:, 1:].flatten()))


class StepLosses(L.Callback):
    def __init__(self):
        self.losses = []  # (epoch, loss, characters in the batch)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append((trainer.current_epoch, float(outputs["loss"]), batch.targets.numel()))


def fit_without_updates(model, dm, epochs=2) -> list:
    """Lightning's real training loop with a learning rate of 0 (no dropout in the model)."""
    model.optimizer_factory = functools.partial(torch.optim.SGD, lr=0.0)
    recorder = StepLosses()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=[recorder],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    return recorder.losses


# -- 2. TBPTT --------------------------------------------------------------------------------
def test_carried_state_over_windows_equals_one_pass_over_the_whole_track(tmp_path,
                                                                        context_weights):
    dm, model = tiny_datamodule(tmp_path), trained_model(context_weights)
    losses = fit_without_updates(model, dm)
    reference = one_pass_loss(model, dm.batches("train").tracks)
    for epoch in (0, 1):  # epoch 1 starts from a fresh state again, so it repeats epoch 0
        steps = [(loss, n) for e, loss, n in losses if e == epoch]
        assert len(steps) == len(dm.batches("train")) > 3
        windowed = sum(loss * n for loss, n in steps) / sum(n for _, n in steps)
        assert windowed == pytest.approx(reference, abs=1e-5)


def test_without_carry_state_every_window_starts_from_zero(tmp_path, context_weights):
    dm, model = tiny_datamodule(tmp_path), trained_model(context_weights, carry_state=False)
    losses = fit_without_updates(model, dm, epochs=1)
    tracks = dm.batches("train").tracks
    model.eval()
    with torch.no_grad():
        for (_, loss, _), batch in zip(losses, dm.batches("train")):
            logits, _ = model(batch.tokens)  # zero initial state
            assert loss == pytest.approx(float(F.cross_entropy(logits.flatten(0, 1),
                                                               batch.targets.flatten())), abs=1e-6)
    windowed = sum(loss * n for _, loss, n in losses) / sum(n for *_, n in losses)
    # Cutting the context costs loss: the equality of the test above can fail.
    assert windowed > one_pass_loss(model, tracks) + 0.05


def test_validation_carries_state_across_its_windows(tmp_path, context_weights):
    dm = tiny_datamodule(tmp_path, bptt=4, eval_batch_size=2)
    model = trained_model(context_weights)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    for _ in range(2):  # a second run starts from a fresh state, so it gives the same loss
        metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
        reference = one_pass_loss(model, dm.batches("val").tracks)
        assert metrics["val/loss"] == pytest.approx(reference, abs=1e-5)
        assert metrics["val/bpc"] == pytest.approx(reference / math.log(2), rel=1e-5)
        assert metrics["val/ppl"] == pytest.approx(math.exp(reference), rel=1e-5)


# -- 3. generation -------------------------------------------------------------------------
def full_rerun_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, -1]


@pytest.mark.parametrize("cell,num_layers,stepper_class", [
    ("lstm", 2, RecurrentStepper), ("gru", 2, RecurrentStepper), ("rnn", 1, RecurrentStepper),
    ("lstm", 2, FusedLSTMStepper), ("lstm", 3, FusedLSTMStepper), ("lstm", 1, FusedLSTMStepper),
])
def test_stateful_next_char_distribution_equals_a_full_rerun(cell, num_layers, stepper_class,
                                                              context_weights):
    if (cell, num_layers) == ("lstm", 2):  # trained: a distribution far from uniform
        model = trained_model(context_weights)
    else:
        model = tiny_model(cell, num_layers=num_layers)
    model.eval()
    ids = model.encode_prompt("ROMEO:\nBut soft, what light")
    stepper = stepper_class(model)
    with torch.no_grad():
        logits = stepper.prime(ids[:3])
        for end in range(3, len(ids)):
            torch.testing.assert_close(logits.softmax(-1),
                                       full_rerun_logits(model, ids[:end]).softmax(-1))
            logits = stepper.step(ids[end])


def test_generation_uses_the_fused_step_for_lstms_and_cells_otherwise():
    assert type(make_stepper(tiny_model("lstm"))) is FusedLSTMStepper
    assert type(make_stepper(tiny_model("gru"))) is RecurrentStepper


def test_same_seed_same_text_and_temperature_zero_is_greedy():
    model = tiny_model()
    first = model.generate("ROMEO:", 60, temperature=1.0, seed=7)
    assert len(first) == 60
    assert model.generate("ROMEO:", 60, temperature=1.0, seed=7) == first
    assert model.generate("ROMEO:", 60, temperature=1.0, seed=8) != first
    # Greedy by hand: re-run the whole text and take the likeliest real character.
    vocab = model.vocabs["chars"]
    ids = model.encode_prompt("ROMEO:")
    for _ in range(40):
        logits = full_rerun_logits(model, ids)
        logits[:2] = float("-inf")  # <pad> and <unk> are never written
        ids.append(int(logits.argmax()))
    expected = "".join(vocab.decode(ids[6:]))
    assert model.generate("ROMEO:", 40, temperature=0) == expected
    assert model.generate("ROMEO:", 40, temperature=0.7, top_k=1, seed=3) == expected


def test_generation_leaves_global_rng_and_training_mode_alone():
    model = tiny_model().train()
    state = torch.random.get_rng_state()
    model.generate("ROMEO:", 20, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training


def test_special_ids_are_never_generated():
    model = tiny_model()
    with torch.no_grad():
        model.head.bias[UNK_ID] = 1e4  # the model "wants" <unk> above everything else
    ids = list(model.generate_ids(model.encode_prompt("R"), 30, temperature=1.0, seed=0))
    assert UNK_ID not in ids and 0 not in ids


# -- 5. prompts with unknown characters ------------------------------------------------------
def test_unknown_prompt_characters_are_named_or_skipped():
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"2 character\(s\).*'Z', 'é'.*unknown_chars=skip"):
        model.generate("ROZMEé", 10)
    skipped = model.generate("ROZMEé", 10, seed=4, unknown_chars="skip")
    assert skipped == model.generate("ROME", 10, seed=4)
    with pytest.raises(ConfigError, match="no character the model knows"):
        model.generate("ZZ", 10, unknown_chars="skip")


# -- 4. a bidirectional encoder is refused at config time ----------------------------------
def experiment_config(tmp_path, *overrides):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return compose_config(tmp_path, ["experiment=shakespeare_char", "data=text_files",
                                     f"data.path={path}", "data.batch_size=4", "data.bptt=16",
                                     "model.encoder.hidden_size=16", "model.embedding_dim=8",
                                     *overrides])


@pytest.mark.parametrize("override", ["model/encoder=bilstm", "model.encoder.bidirectional=true"])
def test_bidirectional_encoder_is_refused_before_training(tmp_path, override):
    cfg = experiment_config(tmp_path, override)
    with pytest.raises(ConfigError, match="model.encoder.bidirectional=true: a language model "
                                          "must not see the characters it predicts"):
        build_data_and_model(cfg)


# -- 6. the experiment runs, and the generate CLI reads its checkpoint ----------------------
def test_experiment_runs_and_generate_cli_continues_its_prompt(tmp_path):
    cfg = experiment_config(tmp_path, "debug=fdr")
    metrics, objects = train(cfg)
    assert 0 < metrics["val/loss"] < 10 and "train/loss" in metrics
    ckpt = tmp_path / "lm.ckpt"
    objects["trainer"].save_checkpoint(ckpt)
    model = load_model(ckpt, expected_task="language_model")
    expected = model.generate("ROMEO:", 25, temperature=0.8, seed=3)

    result = run_cli("seqmodels.cli.generate", f"ckpt_path={ckpt}", "prompt=ROMEO:", "num_chars=25",
                     "seed=3", "device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ROMEO:" + expected + "\n"
    assert not (tmp_path / "outputs").exists()  # nothing but text: no run directory

    result = run_cli("seqmodels.cli.generate", f"ckpt_path={ckpt}", "prompt='Zé!'", cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "'Z', 'é'" in result.stderr and "Traceback" not in result.stderr

    cfg = compose_config(tmp_path, [f"ckpt_path={ckpt}", "prompt='Zé!'", "seed=3",
                                    "threads=null"],  # in-process: leave torch's threads alone
                         config_name="generate")
    with pytest.raises(ConfigError, match="'Z', 'é'"):
        generate_text(cfg)
    with open_dict(cfg):
        cfg.unknown_chars = "skip"
    out = io.StringIO()
    assert generate_text(cfg, out=out) == model.generate("!", 500, temperature=0.8, seed=3)
    assert out.getvalue().startswith("Zé!")  # the prompt as given, then the text


def test_short_run_logs_samples_to_tensorboard_and_checkpoints_on_val_loss(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = experiment_config(tmp_path, "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
                            "model.sample_every_n_steps=2", "model.sample_num_chars=30",
                            "callbacks.rich_progress_bar=null", "test=false")
    metrics, objects = train(cfg)
    assert {"val/loss", "val/bpc", "val/ppl", "train/loss_epoch", "train/ppl_epoch"} <= set(metrics)
    best = objects["trainer"].checkpoint_callback.best_model_path
    assert best and load_model(best, expected_task="language_model").vocabs["chars"] == \
        objects["datamodule"].vocabs["chars"]

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"),
                              size_guidance={"tensors": 0}).Reload()
    samples = events.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [2, 4]
    text = samples[0].tensor_proto.string_val[0].decode()
    assert text.startswith("    ") and len(text) > 30


def test_a_one_cycle_warm_up_shorter_than_two_steps_is_refused_in_one_line(user):
    """OneCycleLR would divide by zero at its first step (a raw traceback): the command says
    what to change instead, before training."""
    cwd, env = user
    result = run_cli("seqmodels.cli.train", "experiment=shakespeare_char", "debug=limit",
                     "trainer.max_epochs=1", "model.embedding_dim=8",
                     "model.encoder.hidden_size=8", cwd=cwd, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "model.scheduler cannot schedule a run of" in result.stderr
    assert "raise model.scheduler.pct_start" in result.stderr
