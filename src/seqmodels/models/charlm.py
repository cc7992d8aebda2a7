"""Character language model: predict each next character; train with truncated BPTT; write
new text one character at a time (the per-step machinery: ``seqmodels.models.sampling``)."""

import math
from collections.abc import Iterator

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric, MinMetric

from seqmodels.data.batching import Batch
from seqmodels.data.vocab import PAD_ID, UNK_ID, Vocab
from seqmodels.errors import ConfigError
from seqmodels.models.base import SequenceModule, net_part
from seqmodels.models.encoder import State
from seqmodels.models.networks import CharLMNet
from seqmodels.models.sampling import check_sampling, make_stepper, pick

UNKNOWN_CHARS = ("error", "skip")
SCHEDULER_INTERVALS = ("epoch", "step")


def detach_state(state: State | None) -> State | None:
    """The same values, cut from the graph of the batch that produced them."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


class CharLanguageModel(SequenceModule):
    """Embedding -> unidirectional encoder -> dropout -> linear over the characters.

    :param vocab_size: read from the datamodule's character vocabulary.
    :param encoder: keyword arguments of ``RNNEncoder`` (its input size is ``embedding_dim``);
        it must be unidirectional.
    :param embedding_dropout, dropout: on the character vectors; on the top layer's outputs.
    :param carry_state: TBPTT: start each training batch from the previous batch's final state
        (detached), and each validation window from the previous window's. Reset at the start
        of every training epoch and of every validation run. False: every batch starts at zero.
    :param sample_every_n_steps: every this many optimizer steps, log a sample of
        ``sample_num_chars`` characters after ``sample_prompt`` to TensorBoard (rank zero, when
        a TensorBoard logger is configured); 0: never.
    :param scheduler_interval: ``epoch``, or ``step`` for per-step schedules, which are then
        given ``total_steps`` (e.g. ``OneCycleLR``).
    """

    task = "language_model"

    def __init__(
        self,
        vocab_size: int,
        encoder: dict,
        embedding_dim: int = 64,
        embedding_dropout: float = 0.0,
        dropout: float = 0.0,
        carry_state: bool = True,
        sample_every_n_steps: int = 0,
        sample_prompt: str = "\n",
        sample_num_chars: int = 200,
        sample_temperature: float = 0.8,
        sample_top_k: int | None = None,
        sample_seed: int = 0,
        optimizer=None,
        scheduler=None,
        scheduler_monitor: str = "val/loss",
        scheduler_interval: str = "epoch",
    ):
        super().__init__(optimizer, scheduler, scheduler_monitor)
        if encoder.get("bidirectional", False):
            raise ConfigError(
                "model.encoder.bidirectional=true: a language model must not see the characters "
                "it predicts, and a backward direction reads them; use a unidirectional encoder "
                "(model/encoder=lstm, gru, rnn, mingru or minlstm)"
            )
        for name, p in (("embedding_dropout", embedding_dropout), ("dropout", dropout)):
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {p}")
        if scheduler_interval not in SCHEDULER_INTERVALS:
            raise ConfigError(f"model.scheduler_interval={scheduler_interval!r} is not one of "
                              f"{list(SCHEDULER_INTERVALS)}")
        if sample_every_n_steps < 0:
            raise ConfigError(
                f"model.sample_every_n_steps must be >= 0, got {sample_every_n_steps}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.carry_state = carry_state
        self.scheduler_interval = scheduler_interval
        self.net = CharLMNet(vocab_size, encoder, embedding_dim=embedding_dim,
                             embedding_dropout=embedding_dropout, dropout=dropout)

        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_loss_best = MinMetric()
        # The state carried from one window to the next, one per loop (validation may run in
        # the middle of a training epoch without disturbing the training state).
        self._states: dict[str, State | None] = {}
        self._last_sample_step = -1

    # -- the network (``self.net``, models/networks.py) -----------------------------------
    # Its parts, as generation and the tools read them.
    embedding = net_part("embedding")
    encoder = net_part("encoder")
    head = net_part("head")

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State | None]:
        """(B, T) character ids and an optional initial state -> (B, T, V) next-character
        logits and the final state (exact: every row is full length)."""
        return self.net(tokens, state)

    def _loss(self, batch: Batch, loop: str) -> Tensor:
        """Mean cross-entropy in nats per character, carrying ``loop``'s state."""
        state = self._states.get(loop) if self.carry_state else None
        if state is not None and _batch_size(state) != len(batch):
            state = None  # a batch of another shape cannot continue these tracks
        loss, state = self.net.training_loss(batch, state)
        self._states[loop] = detach_state(state) if self.carry_state else None
        return loss

    # -- training and evaluation loops ---------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.sample_every_n_steps:
            self.encode_prompt(self.hparams.sample_prompt, "skip")  # fail now, not mid-training

    def on_train_start(self) -> None:
        self.val_loss_best.reset()  # the sanity check's numbers are not a result
        # A state restored from a checkpoint may be on another device.
        self._states["train"] = move_data_to_device(self._states.get("train"), self.device)

    def on_train_epoch_start(self) -> None:
        self._states["train"] = None  # epoch k+1 starts again at the tracks' beginnings

    def training_loss(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._loss(batch, "train")
        size = len(batch)
        if self.log_train_loss(loss, batch_size=size, weight=batch.targets.numel()):
            self.log("train/bpc", loss / math.log(2), on_step=True, on_epoch=False,
                     batch_size=size)
            self.log("train/ppl", loss.exp(), on_step=True, on_epoch=False, batch_size=size)
        return loss

    def log_epoch_train_loss(self) -> None:
        self._log_summary("train", self.epoch_train_loss(), suffix="_epoch")

    def on_validation_epoch_start(self) -> None:
        self._states["val"] = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch, "val"), weight=batch.targets.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self._log_summary("val", self.val_loss, prog_bar=True)
        self.val_loss_best(loss)
        self.log("val/loss_best", self.val_loss_best.compute(), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self._states["test"] = None

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.test_loss.update(self._loss(batch, "test"), weight=batch.targets.numel())

    def on_test_epoch_end(self) -> None:
        self._log_summary("test", self.test_loss)

    def _log_summary(self, split: str, mean_loss: MeanMetric, suffix: str = "",
                     prog_bar: bool = False) -> Tensor:
        """Loss, bits per character and perplexity of the mean loss, then start the mean
        afresh. The mean is over every character of every rank (the metric syncs), so each rank
        logs the same value; ``sync_dist`` only tells Lightning so."""
        loss = mean_loss.compute()
        mean_loss.reset()
        self.log(f"{split}/loss{suffix}", loss, prog_bar=prog_bar, sync_dist=True)
        self.log(f"{split}/bpc{suffix}", loss / math.log(2), sync_dist=True)
        self.log(f"{split}/ppl{suffix}", loss.exp(), prog_bar=prog_bar, sync_dist=True)
        return loss

    def configure_optimizers(self):
        if self.scheduler_factory is None or self.scheduler_interval == "epoch":
            return super().configure_optimizers()
        factory = self.optimizer_factory or torch.optim.Adam
        optimizer = factory(params=[p for p in self.parameters() if p.requires_grad])
        total_steps = self.trainer.estimated_stepping_batches  # optimizer steps, accumulation too
        if not math.isfinite(total_steps):
            raise ConfigError("model.scheduler_interval=step needs a known number of steps: set "
                              "trainer.max_epochs or trainer.max_steps")
        try:
            scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=int(total_steps))
        except ZeroDivisionError:
            # OneCycleLR over too few steps: its warm-up (pct_start of them) spans under two
            # steps, and its first step divides by zero.
            raise ConfigError(
                f"model.scheduler cannot schedule a run of {int(total_steps)} optimizer steps "
                "(for OneCycleLR: its warm-up, pct_start of them, is under 2 steps); train for "
                "more steps or raise model.scheduler.pct_start") from None
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        # The carried state, for a run resumed inside an epoch (one process: rank 0's).
        checkpoint["seqmodels"]["carried_state"] = self._states.get("train")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Resumed inside an epoch, Lightning skips on_train_epoch_start: the tracks go on from
        # here. A new epoch still starts from zero. Under DDP the checkpoint has only rank 0's.
        trainer = self.attached_trainer()
        if trainer is None or trainer.world_size == 1:
            self._states["train"] = checkpoint.get("seqmodels", {}).get("carried_state")

    # -- samples in TensorBoard ----------------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every, step = self.hparams.sample_every_n_steps, self.global_step
        if not every or step == 0 or step % every or step == self._last_sample_step:
            return
        self._last_sample_step = step  # once per optimizer step, also when accumulating
        board = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is None or not self.trainer.is_global_zero:
            return
        prompt = self.hparams.sample_prompt
        text = prompt + self.generate(prompt, self.hparams.sample_num_chars,
                                      self.hparams.sample_temperature, self.hparams.sample_top_k,
                                      seed=self.hparams.sample_seed, unknown_chars="skip")
        # TensorBoard renders markdown: indenting every line keeps the line breaks.
        board.experiment.add_text("sample", "\n".join("    " + line for line in text.split("\n")),
                                  global_step=step)

    # -- generation ----------------------------------------------------------------------
    @property
    def char_vocab(self) -> Vocab:
        if "chars" not in self.vocabs:
            raise ConfigError("this model has no character vocabulary: load it from a "
                              "checkpoint, or set model.vocabs from the datamodule")
        return self.vocabs["chars"]

    def encode_prompt(self, prompt: str, unknown_chars: str = "error") -> list[int]:
        """The prompt's character ids. Characters the model never saw in training are an error
        naming them, or left out with ``unknown_chars=skip``."""
        if unknown_chars not in UNKNOWN_CHARS:
            raise ConfigError(
                f"unknown_chars={unknown_chars!r} is not one of {list(UNKNOWN_CHARS)}")
        stoi = self.char_vocab.stoi
        unknown = list(dict.fromkeys(ch for ch in prompt if ch not in stoi))
        if unknown and unknown_chars == "error":
            raise ConfigError(
                f"the prompt has {len(unknown)} character(s) that the model never saw in "
                f"training: {', '.join(repr(ch) for ch in unknown)}; remove them or pass "
                "unknown_chars=skip to leave them out"
            )
        ids = [stoi[ch] for ch in prompt if ch in stoi]
        if not ids:
            raise ConfigError("the prompt has no character the model knows; give at least one "
                              "(for example a newline)")
        return ids

    def stream(self, prompt: str, num_chars: int, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               unknown_chars: str = "error") -> Iterator[str]:
        """The characters that follow ``prompt``, yielded one at a time as they are sampled.
        The prompt is checked now, before the first character is asked for."""
        ids = self.encode_prompt(prompt, unknown_chars)
        check_sampling(num_chars, temperature, top_k)
        itos = self.char_vocab.itos
        return (itos[i] for i in self.generate_ids(ids, num_chars, temperature, top_k, seed))

    def generate(self, prompt: str, num_chars: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None,
                 unknown_chars: str = "error") -> str:
        """``num_chars`` characters that follow ``prompt`` (the prompt itself not included).
        The same seed gives the same text; ``temperature=0`` picks the likeliest character."""
        return "".join(self.stream(prompt, num_chars, temperature, top_k, seed, unknown_chars))

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[int], num_chars: int, temperature: float = 1.0,
                     top_k: int | None = None, seed: int | None = None) -> Iterator[int]:
        """Sampled character ids, one at a time. The prompt is read once; after that each
        character costs one recurrent step, whatever the length of the text so far."""
        was_training = self.training
        self.eval()
        try:
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
            never = torch.zeros(self.head.out_features, device=self.device)
            if self.char_vocab.has_specials:
                never[[PAD_ID, UNK_ID]] = float("-inf")  # not characters: never written
            stepper = make_stepper(self)
            logits = stepper.prime(prompt_ids)
            for count in range(num_chars):
                char_id = pick(logits + never, temperature, top_k, generator)
                yield char_id
                if count + 1 < num_chars:
                    logits = stepper.step(char_id)
        finally:
            self.train(was_training)


def _batch_size(state: State) -> int:
    return (state[0] if isinstance(state, tuple) else state).size(1)
