"""The command-line tools: thin Hydra mains over plain functions."""
