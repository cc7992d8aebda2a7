"""The run's TensorBoard logger, and figures drawn for it off-screen."""

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger


def tensorboard_of(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def figure_pixels(figure) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a matplotlib ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def new_figure(width: float, height: float):
    # Imported here: matplotlib takes most of a second to import, which runs that log
    # nothing to TensorBoard should not pay.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")
