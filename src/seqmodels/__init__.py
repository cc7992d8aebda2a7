"""seqmodels: recurrent sequence models on Lightning, configured with Hydra."""

__version__ = "0.1.0"
