"""Data sources, the canonical on-disk form and in-memory data modules."""
