"""The HParams tab: this run's settings beside the last value of each of its metrics."""

import time
from collections.abc import Mapping

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from seqmodels.callbacks.tensorboard_views.board import tensorboard_of

HParamValue = bool | int | float | str
HYDRA_FLAGS = ("_partial_", "_recursive_", "_convert_")  # how to build, not what was built
# How an interrupted run (Ctrl+C, SIGTERM) ended: not finished. The HParams protocol has no
# "aborted" status in the tensorboard releases we support (2.21 has FAILURE, RUNNING, SUCCESS
# and UNKNOWN only); should one appear, it says it better than FAILURE.
STATUS_INTERRUPTED = getattr(api_pb2, "STATUS_ABORTED", api_pb2.STATUS_FAILURE)


def flatten(settings: Mapping, prefix: str = "") -> dict[str, HParamValue]:
    """Nested settings -> ``{"model/encoder/cell": "lstm", ...}``, in the value types the HParams
    tab takes: ``None`` becomes ``"null"`` and lists their text."""
    flat: dict[str, HParamValue] = {}
    for key, value in settings.items():
        if key in HYDRA_FLAGS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = "null" if value is None else str(value)
    return flat


def session_end(status: int) -> Summary:
    """The HParams record of how a run ended (``api_pb2.STATUS_SUCCESS``, ...)."""
    info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info,
                                                version=metadata.PLUGIN_DATA_VERSION)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=metadata.create_summary_metadata(content))])


class HParamsTab(L.Callback):
    """This run's settings in TensorBoard's HParams tab, beside its final metrics.

    Only the run's own record is written: its settings when fitting starts, its end status
    when fitting ends (success; failure, also for an interruption: ``STATUS_INTERRUPTED``).
    No experiment summary, so TensorBoard builds the table from every run under the log
    directory: all their settings, and as metrics the last value of every scalar each run
    logged (``val/acc_best``, ``test/acc``, ...).
    ``TensorBoardLogger.log_hyperparams(params, metrics)`` would instead write an experiment
    summary into every run, and TensorBoard takes the first one it finds as the columns for
    all of them (runs of another task lose theirs), plus a placeholder point at step 0 in every
    metric's chart.

    :param hparams: the settings to show, nested (the config passes the resolved ``model``,
        ``data`` and ``trainer`` groups and the seed); flattened to ``model/encoder/cell``.
    """

    def __init__(self, hparams: Mapping):
        if isinstance(hparams, DictConfig):
            hparams = OmegaConf.to_container(hparams, resolve=True)
        self.hparams = flatten(hparams)
        self._running = False  # a session was started and has not ended yet

    def on_fit_start(self, trainer, pl_module) -> None:
        _, start, _ = hparams_summaries(self.hparams, {})  # experiment, start, (premature) end
        self._write(trainer, start)
        self._running = True

    def on_fit_end(self, trainer, pl_module) -> None:
        self._end(trainer, api_pb2.STATUS_SUCCESS)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt | SIGTERMException)
        self._end(trainer, STATUS_INTERRUPTED if interrupted else api_pb2.STATUS_FAILURE)

    def _end(self, trainer, status: int) -> None:
        if self._running:
            self._write(trainer, session_end(status))
            self._running = False

    @staticmethod
    def _write(trainer, summary) -> None:
        board = tensorboard_of(trainer)
        if board is None or not trainer.is_global_zero:
            return
        # SummaryWriter has no public call for a prebuilt summary; Lightning's own
        # log_hyperparams writes its hparams summaries the same way.
        board.experiment._get_file_writer().add_summary(summary, trainer.global_step)
