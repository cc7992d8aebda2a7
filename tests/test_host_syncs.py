"""No waiting on the host in a training step: on a GPU every data-dependent read (``.item()``,
``int()``, boolean indexing, ``unique``, copies to the host) stalls the stream. Counted here on
the CPU, for a whole training step of each task as ``seqmodels-train`` runs it (default
callbacks, weight averaging included; forward, backward, clipping, optimizer step, the
callbacks' batch hooks): none on a step that does not log. The logging steps may read
(Lightning turns logged values into numbers there).

The encoder runs the strategy that ``variable_length=auto`` picks on CUDA, not the CPU's, and
packing counts as a read: ``pack_padded_sequence`` needs the lengths on the host, and on CUDA
its sort order goes to the device and back (``models/encoder.py``)."""

import lightning as L
import pytest

from seqmodels.cli.train import train
from seqmodels.models.encoder import RNNEncoder
from tests.conftest import compose_config
from tests.test_char_features import HostReads
from tests.tiny_datasets import write_named_datasets

LOG_EVERY = 4


class HostReadsOnCuda(HostReads):
    """HostReads, plus packing: a host round trip on CUDA, though not on the CPU."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket._qualified_op_name == "aten::_pack_padded_sequence":
            self.reads.append("aten._pack_padded_sequence (sort order to the device and back)")
        return super().__torch_dispatch__(func, types, args, kwargs)


class CountHostReads(L.Callback):
    """The host reads of each training batch, from its start to its end hooks (this callback
    comes after the configured ones, so their batch-end hooks count too)."""

    def __init__(self):
        self.reads: dict[int, list[str]] = {}
        self._mode: HostReads | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mode = HostReadsOnCuda()
        self._mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._mode.__exit__(None, None, None)
        self.reads[batch_idx] = self._mode.reads


# What ``variable_length=auto`` runs on a GPU, with lengths (sentences) and without (the char LM).
ON_CUDA = RNNEncoder.auto_strategy("cuda", variable_lengths=True)
ON_CUDA_FULL_ROWS = RNNEncoder.auto_strategy("cuda", variable_lengths=False)

TASKS = {
    "sentiment": ["experiment=sst2_bilstm", "model.embedding_dim=16",
                  "model.encoder.hidden_size=16", "data.batch_size=8"],
    "tagger with characters": ["experiment=ewt_upos", "model.embedding_dim=16",
                               "model.encoder.hidden_size=16", "data.batch_size=8"],
    "sentiment with GloVe": ["experiment=sst2_bilstm", "model/embeddings=glove_6b_50d",
                             "model.encoder.hidden_size=16", "data.batch_size=8"],
    "tagger with frozen GloVe": ["experiment=ewt_upos", "model/embeddings=glove_6b_50d",
                                 "model.embeddings.freeze=true", "model.encoder.hidden_size=16",
                                 "data.batch_size=8"],
    "char LM": ["experiment=shakespeare_char", "model.embedding_dim=8",
                "model.encoder.hidden_size=16", "data.batch_size=4", "data.bptt=16"],
}


@pytest.mark.parametrize("task", TASKS)
def test_a_training_step_that_does_not_log_reads_nothing_back(task, tmp_path, monkeypatch,
                                                              one_thread):
    monkeypatch.setenv("SEQMODELS_DATA_DIR", str(write_named_datasets(tmp_path / "data")))
    monkeypatch.setenv("SEQMODELS_CACHE_DIR", str(tmp_path / "cache"))
    strategy = ON_CUDA_FULL_ROWS if task == "char LM" else ON_CUDA
    cfg = compose_config(tmp_path, [
        *TASKS[task], f"model.encoder.variable_length={strategy}", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=12",
        "+trainer.limit_val_batches=1", f"trainer.log_every_n_steps={LOG_EVERY}", "test=false",
        "+callbacks.host_reads._target_=tests.test_host_syncs.CountHostReads",
    ])
    _, objects = train(cfg)
    (counter,) = [c for c in objects["trainer"].callbacks if isinstance(c, CountHostReads)]
    assert sorted(counter.reads) == list(range(12))
    logging = {0} | {step for step in range(12) if (step + 1) % LOG_EVERY == 0}
    quiet = {step: reads for step, reads in counter.reads.items()
             if step not in logging and reads}
    assert quiet == {}, f"host reads on steps that do not log: {quiet}"
