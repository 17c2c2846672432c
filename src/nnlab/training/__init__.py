"""Training: fitting networks (Lightning and NumPy), the epoch history, and scoring."""
