"""Every rank of a multi-process run must mean the same words by the same ids."""

import hashlib
import json

import lightning as L

from seqmodels.errors import DataError


def vocabulary_fingerprint(vocabs: dict) -> str:
    content = json.dumps({name: vocab.to_dict() for name, vocab in sorted(vocabs.items())},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


class SameVocabularies(L.Callback):
    """Every rank builds the vocabularies from its own copy of the training data; ids mean the
    same thing everywhere only if those copies agree. Checked once the process group exists."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size == 1:
            return
        mine = vocabulary_fingerprint(pl_module.vocabs)
        if trainer.strategy.broadcast(mine, src=0) != mine:
            raise DataError(
                f"rank {trainer.global_rank} built different vocabularies from rank 0: the "
                "training data differs between processes or machines; give every node the same "
                "files (paths.data_dir)"
            )
