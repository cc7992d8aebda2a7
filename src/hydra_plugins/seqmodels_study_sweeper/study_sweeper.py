"""``hydra/sweeper=study``: hydra-optuna-sweeper with the study as the unit of work (its size is
``n_trials``, whoever runs it; interrupted trials are failed and replaced; optional pruning).
Hydra only loads sweepers from the ``hydra_plugins`` package, hence this thin module; the
search itself is ``seqmodels.training.sweeps.StudySweep``. Without the `sweep` extra it
defines nothing, so that Hydra's plugin scan has nothing to warn about."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover - the `sweep` extra is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    class StudyOptunaSweeper(OptunaSweeper):
        def __init__(self, *, pruning: bool = False, pruner: Any = None,
                     heartbeat_interval: int = 30, grace_period: int = 120,
                     poll_interval: float = 5.0, **settings: Any) -> None:
            from seqmodels.training.sweeps import StudySweep

            self.sweeper = StudySweep(pruning=pruning, pruner=pruner,
                                      heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period, poll_interval=poll_interval,
                                      **settings)

    @dataclass
    class StudyOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = ("hydra_plugins.seqmodels_study_sweeper.study_sweeper."
                         "StudyOptunaSweeper")
        # Stop hopeless trials early: each job reports its validation metric per epoch.
        pruning: bool = False
        pruner: Any = field(default_factory=lambda: {
            "_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 4,
            "n_warmup_steps": 2})
        # Seconds between a running trial's heartbeats, and without one before it is dead.
        heartbeat_interval: int = 30
        grace_period: int = 120
        # Seconds between looks at trials that other processes are running.
        poll_interval: float = 5.0

    ConfigStore.instance().store(group="hydra/sweeper", name="study_schema",
                                 node=StudyOptunaSweeperConf, provider="seqmodels")
