"""No waiting on the host in a training step: on a GPU every data-dependent read (``.item()``,
``int()``, boolean indexing, ``unique``, copies to the host) stalls the stream. Counted here on
the CPU, for a whole training step of each task as ``seqmodels-train`` runs it (default
callbacks, weight averaging included; forward, backward, clipping, optimizer step, the
callbacks' batch hooks): none on a step that does not log. The logging steps may read
(Lightning turns logged values into numbers there).

The encoder runs the strategy that ``variable_length=auto`` picks on CUDA, not the CPU's, and
packing counts as a read: ``pack_padded_sequence`` needs the lengths on the host, and on CUDA
its sort order goes to the device and back (``models/encoder.py``)."""

import traceback

import lightning as L
import pytest
import torch

from seqmodels.cli.train import train
from seqmodels.models.encoder import RNNEncoder
from tests.conftest import compose_config
from tests.test_char_features import HostReads
from tests.tiny_datasets import write_named_datasets

LOG_EVERY = 4
VALIDATION = "lightning/pytorch/loops/evaluation_loop.py"


class HostReadsOnCuda(HostReads):
    """HostReads as the run would read on CUDA: packing counts (a host round trip there,
    though not on the CPU), and a value the code copied to the host explicitly
    (``.to("cpu", copy=True)``), or a copy or view of one, is read for free (it is on the host
    on CUDA too).

    :param host: ids of such host values, shared by the counters of successive steps (a value
        logged on one step is read on the next ones), with the tensors kept alive."""

    FOLLOW = {"aten::clone", "aten::detach", "aten::alias", "aten::squeeze", "aten::view",
              "aten::_to_copy"}

    def __init__(self, host: dict):
        super().__init__()
        self.host = host

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket._qualified_op_name
        if name == "aten::_local_scalar_dense" and id(args[0]) in self.host:
            return func(*args, **(kwargs or {}))
        if name == "aten::_pack_padded_sequence":
            self.reads.append("aten._pack_padded_sequence (sort order to the device and back)")
        before = len(self.reads)
        result = super().__torch_dispatch__(func, types, args, kwargs)
        if len(self.reads) > before and any(frame.filename.endswith(VALIDATION)
                                            for frame in traceback.extract_stack()):
            del self.reads[before:]  # a validation inside the epoch: not the step's work
        to_host = name == "aten::_to_copy" and str((kwargs or {}).get("device")) == "cpu"
        if isinstance(result, torch.Tensor) and (
                to_host or (name in self.FOLLOW and id(args[0]) in self.host)):
            self.host[id(result)] = result
        return result


class CountHostReads(L.Callback):
    """The host reads of each training batch: from its start hook to the next batch's, so that
    what Lightning does after the batch-end hooks (its logging bookkeeping, schedulers, the
    loop's counters) counts too, and so do the batch-end hooks of the configured callbacks.
    The next batch's collate runs in that window as well; on a GPU it runs on the host, in
    the loader, and reads nothing from the device, but a read there would be counted here.
    A validation inside the epoch (the char LM's) falls in a window too; its reads are left
    out (``HostReadsOnCuda``)."""

    def __init__(self):
        self.reads: dict[int, list[str]] = {}
        self._mode: HostReads | None = None
        self._batch_idx = -1
        self._host: dict[int, torch.Tensor] = {}

    def _close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.reads[self._batch_idx] = self._mode.reads
            self._mode = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._close()
        self._batch_idx = batch_idx
        self._mode = HostReadsOnCuda(self._host)
        self._mode.__enter__()

    def on_train_epoch_end(self, trainer, pl_module):
        self._close()


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
