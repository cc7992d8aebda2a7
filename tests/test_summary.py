"""``seqmodels-summary``: the printed counts are torch's counts (in total, per layer and per
tensor slice), the textbook example adds up, stacked bidirectional layers have the right
shapes, and the checkpoint, config and command-line paths all work."""

import io
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from seqmodels.cli.summary import summarize
from seqmodels.data.batching import Batch
from seqmodels.data.vocab import Vocab
from seqmodels.errors import ConfigError
from seqmodels.models.anatomy import describe
from seqmodels.models.charlm import CharLanguageModel
from seqmodels.models.sentiment import SentimentClassifier
from seqmodels.models.tagger import SequenceTagger
from tests.conftest import compose_config, run_cli, write_lines


def sentiment(cell="lstm", hidden=6, layers=2, bidirectional=True, combine="concat"):
    encoder = {"cell": cell, "hidden_size": hidden, "num_layers": layers,
               "bidirectional": bidirectional, "combine": combine}
    return SentimentClassifier(vocab_size=10, num_classes=3, encoder=encoder, embedding_dim=5)


def rnn_blocks(model):
    return [b for b in describe(model) if re.search(r": (RNN|LSTM|GRU|minGRU|minLSTM),", b.title)]


def row(block, symbol):
    return next(r for r in block.rows if r.symbol == symbol)


# -- the counts are torch's ---------------------------------------------------------------------
MODELS = {
    "elman": lambda: sentiment("rnn", layers=1, bidirectional=False),
    "gru-2-sum": lambda: sentiment("gru", combine="sum"),
    "bilstm-3-mul": lambda: sentiment("lstm", layers=3, combine="mul"),
    "tagger-chars": lambda: SequenceTagger(12, 7, ["A", "B", "C"], {"hidden_size": 4},
                                           embedding_dim=3, chars={"embedding_dim": 2,
                                                                   "hidden_size": 3}),
    "charlm": lambda: CharLanguageModel(9, {"cell": "gru", "hidden_size": 4, "num_layers": 2},
                                        embedding_dim=3),
    "minlstm-2-bi": lambda: sentiment("minlstm"),
    "charlm-mingru": lambda: CharLanguageModel(9, {"cell": "mingru", "hidden_size": 4,
                                                   "num_layers": 2}, embedding_dim=3),
    "raw-torch-lstm": lambda: nn.Sequential(nn.Embedding(7, 3),
                                            nn.LSTM(3, 4, num_layers=2, bidirectional=True)),
    "tied-weights": lambda: tied(nn.Embedding(7, 3), nn.Linear(3, 7)),
}


def tied(embedding: nn.Embedding, output: nn.Linear) -> nn.Module:
    """Input and output embeddings sharing one matrix (Press & Wolf 2017): counted once."""
    output.weight = embedding.weight
    return nn.Sequential(embedding, output)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_counted_once_and_every_formula_agrees(name):
    model = MODELS[name]()
    blocks = describe(model)
    assert sum(b.count for b in blocks) == sum(p.numel() for p in model.parameters())
    assert all("MISMATCH" not in b.formula for b in blocks)
    # Each RNN row is a real slice of the tensor it names, of the shape it shows.
    for block in rnn_blocks(model):
        path = re.search(r"\((.*)\)$", block.title)
        module = model.get_submodule(path.group(1)) if path else model
        for r in block.rows:
            parts = []
            for name_and_slice, size in zip(r.tensor.split(" + "), r.shape.split(" + ")):
                match = re.fullmatch(r"(\w+?)(?:\[(\d+):(\d+)\])?", name_and_slice)
                tensor = getattr(module, match.group(1))
                if match.group(2):
                    tensor = tensor[int(match.group(2)):int(match.group(3))]
                assert " × ".join(map(str, tensor.shape)) == size
                parts.append(tensor.numel())
            assert sum(parts) == r.count


def test_textbook_elman_example_adds_up(tmp_path):
    """Embedding(62, 100) + RNN(100 -> 128) + Linear(128 -> 2), built from the training config:
    60 words in the data plus <pad> and <unk>."""
    words = [f"w{i:02d}" for i in range(60)]
    train = write_lines(tmp_path / "train.txt", [f"{i % 2} {' '.join(words)}" for i in range(4)])
    cfg = compose_config(tmp_path, [
        "data=text_classification", f"data.train_path={train}", f"data.val_path={train}",
        "model=sentiment", "model/encoder=rnn", "model.embedding_dim=100",
        "model.encoder.hidden_size=128", "model.pooling=final"], config_name="summary")
    reference = [nn.Embedding(62, 100), nn.RNN(100, 128), nn.Linear(128, 2)]
    assert [sum(p.numel() for p in m.parameters()) for m in reference] == [6200, 29440, 258]

    for output_format in ("text", "markdown"):
        cfg.format = output_format
        out = io.StringIO()
        assert summarize(cfg, out) == 35_898
        text = out.getvalue()
        for number in ("6,200", "29,440", "258", "35,898", "12,800", "16,384"):
            assert number in text, (number, output_format)
        assert "H·(I+H) + 2H = 128·(100+128) + 2·128 = 29,440" in text
        assert "h_t = tanh(W x_t + U h_(t-1) + b)" in text
    assert "| **total** | | **35,898** |" in text


# -- stacked bidirectional layers ---------------------------------------------------------------
@pytest.mark.parametrize("combine", ["concat", "sum", "mul"])
def test_two_layer_bilstm_shapes(combine):
    """Layer 2 reads both directions of layer 1 concatenated (2H) whatever ``combine`` is:
    RNNEncoder merges the directions of the top layer only. The classifier reads the merge."""
    model, hidden = sentiment("lstm", hidden=6, combine=combine), 6
    blocks = rnn_blocks(model)
    assert [b.title.split(":")[0] for b in blocks] == [
        "encoder layer 1, forward", "encoder layer 1, backward",
        "encoder layer 2, forward", "encoder layer 2, backward"]
    # The tensors are those of the encoder's one torch module: weight_ih_l<layer>[_reverse].
    names = ("l0", "l0_reverse", "l1", "l1_reverse")
    for block, inputs, name in zip(blocks, (5, 5, 2 * hidden, 2 * hidden), names):
        assert [r.symbol for r in block.rows] == [f"{m}_{g}" for g in "ifgo" for m in "WUb"]
        assert row(block, "W_i").shape == f"{hidden} × {inputs}"
        assert row(block, "U_o").shape == f"{hidden} × {hidden}"
        assert row(block, "W_f").tensor == f"weight_ih_{name}[{hidden}:{2 * hidden}]"
        assert block.count == 4 * (hidden * (inputs + hidden) + 2 * hidden)
    classifier = next(b for b in describe(model) if b.title.startswith("classifier"))
    merged = 2 * hidden if combine == "concat" else hidden
    assert row(classifier, "V").shape == f"3 × {merged}"


def test_gru_gates_and_raw_torch_bidirectional_layers():
    blocks = rnn_blocks(sentiment("gru", layers=1, bidirectional=False))
    assert [r.symbol for r in blocks[0].rows] == ["W_r", "U_r", "b_r", "W_z", "U_z", "b_z",
                                                  "W_n", "U_n", "b_in, b_hn"]
    assert "n_t = tanh(W_n x_t + b_in + r_t ⊙ (U_n h_(t-1) + b_hn))" in blocks[0].equations
    raw = rnn_blocks(MODELS["raw-torch-lstm"]())
    assert [b.title.split(":")[0] for b in raw] == ["1 layer 1, forward", "1 layer 1, backward",
                                                   "1 layer 2, forward", "1 layer 2, backward"]
    assert row(raw[3], "W_i").tensor == "weight_ih_l1_reverse[0:4]"
    assert row(raw[3], "W_i").shape == "4 × 8"


@pytest.mark.parametrize("cell,gates", [("mingru", "zh"), ("minlstm", "fih")])
def test_parallel_cells_show_their_equations_and_gate_weights(cell, gates):
    """No h-to-h weights: a (W, b) per gate of shape (H, I) and (H,), G·H·(I+1) a layer."""
    hidden = 6
    blocks = rnn_blocks(sentiment(cell, hidden=hidden))
    assert [b.title.split(":")[0] for b in blocks] == [
        "encoder layer 1, forward", "encoder layer 1, backward",
        "encoder layer 2, forward", "encoder layer 2, backward"]
    for block, inputs in zip(blocks, (5, 5, 2 * hidden, 2 * hidden)):
        assert [r.symbol for r in block.rows] == [f"{m}_{g}" for g in gates for m in "Wb"]
        assert row(block, "W_h").shape == f"{hidden} × {inputs}"
        assert row(block, "W_h").tensor.endswith(f"[{(len(gates) - 1) * hidden}:"
                                                  f"{len(gates) * hidden}]")
        assert block.count == len(gates) * hidden * (inputs + 1)
        assert f"{len(gates)}·H·(I+1) = {len(gates)}·{hidden}·({inputs}+1)" in block.formula
    name = {"mingru": "minGRU", "minlstm": "minLSTM"}[cell]
    assert f": {name}, I=5 → H=6" in blocks[0].title
    update = ("h_t = (1 - z_t) ⊙ h_(t-1) + z_t ⊙ h̃_t" if cell == "mingru"
              else "h_t = f'_t ⊙ h_(t-1) + i'_t ⊙ h̃_t")
    assert any(e.startswith(update) for e in blocks[0].equations)
    assert blocks[1].equations == []  # each set of equations once


# -- from a checkpoint, and on the command line -------------------------------------------------
@pytest.fixture
def sentiment_ckpt(tmp_path) -> Path:
    model = sentiment("gru", hidden=4, layers=1)
    model.vocabs = {"tokens": Vocab(["<pad>", "<unk>", *"abcdefgh"]),
                    "labels": Vocab(["x", "y", "z"], has_specials=False)}
    batch = Batch(torch.tensor([[2, 3, 4]]), torch.tensor([3]), torch.tensor([1]))
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader([batch], batch_size=None))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    return tmp_path / "model.ckpt"


def test_checkpoint_summary_on_the_command_line(tmp_path, sentiment_ckpt):
    expected = sum(p.numel() for p in sentiment("gru", hidden=4, layers=1).parameters())
    result = run_cli("seqmodels.cli.summary", f"ckpt_path={sentiment_ckpt}", "format=markdown",
                     cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"## SentimentClassifier from {sentiment_ckpt}: "
                                    f"{expected:,} parameters")
    assert f"| **total** | | **{expected:,}** |" in result.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "logs").exists()

    cfg = compose_config(tmp_path, [f"ckpt_path={sentiment_ckpt}", "format=html"],
                         config_name="summary")
    with pytest.raises(ConfigError, match="format='html' is not one of"):
        summarize(cfg, io.StringIO())
