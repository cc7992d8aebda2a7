"""What TensorBoard shows beyond the logged scalars, one callback per view: each run's settings
in the HParams tab (``hparams_tab``), a confusion matrix and per-class F1 bars of every
validation (``validation``), and (opt-in) how much gradient reaches each time step of the encoder
(``hidden_grad_norms``).

Every view does nothing unless a ``TensorBoardLogger`` is configured, and draws on rank zero
only. Figures are drawn on matplotlib's Agg canvas, never through pyplot (``board``): no GUI
backend is chosen and no global figure list grows during training.
"""
