"""The trainer settings about optimizer steps (gradient clipping, gradient accumulation), which
the task modules carry out themselves rather than Lightning's automatic loop.

Users set them where Lightning users look for them, ``trainer.gradient_clip_val``,
``trainer.gradient_clip_algorithm`` and ``trainer.accumulate_grad_batches``; ``train`` takes
them out of the trainer's arguments (Lightning refuses them with manual optimization) and hands
them to the module (``SequenceModule.stepping``).
"""

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from seqmodels.errors import ConfigError

CLIP_ALGORITHMS = ("norm", "value")


@dataclass(frozen=True)
class Stepping:
    """:param gradient_clip_val: clip gradients to this norm (or value) before each optimizer
        step; None or 0: no clipping.
    :param gradient_clip_algorithm: ``norm`` (the total 2-norm) or ``value`` (each element).
    :param accumulate_grad_batches: add up the gradients of this many batches per step (the
        loss of each is divided by it, as Lightning does).
    """

    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1

    def __post_init__(self) -> None:
        # Lightning accepts the algorithm's name in any case.
        algorithm = str(self.gradient_clip_algorithm).lower()
        object.__setattr__(self, "gradient_clip_algorithm", algorithm)
        clip = self.gradient_clip_val
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int | float)
                                 or clip < 0):
            raise ConfigError(f"trainer.gradient_clip_val must be a number >= 0 or null, got "
                              f"{clip!r}")
        if self.gradient_clip_algorithm not in CLIP_ALGORITHMS:
            raise ConfigError(f"trainer.gradient_clip_algorithm={self.gradient_clip_algorithm!r} "
                              f"is not one of {list(CLIP_ALGORITHMS)}")
        accumulate = self.accumulate_grad_batches
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
            raise ConfigError("trainer.accumulate_grad_batches must be a whole number >= 1, got "
                              f"{accumulate!r}")

    @property
    def clips(self) -> bool:
        return bool(self.gradient_clip_val)

    @classmethod
    def split_trainer_config(cls, trainer_cfg: DictConfig) -> tuple["Stepping", DictConfig]:
        """(the stepping settings in ``trainer_cfg``, the rest of it, resolved: a config the
        trainer can be built from)."""
        names = {f.name for f in fields(cls)}
        resolved = OmegaConf.to_container(trainer_cfg, resolve=True)
        values = {name: resolved.pop(name) for name in names if name in resolved}
        return cls(**{k: v for k, v in values.items() if v is not None}), OmegaConf.create(resolved)
