"""What one run needs around the trainer: run directories, devices and processes,
precision, checkpoint files."""
