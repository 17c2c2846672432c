"""Reports: figures, tables, and the published reference figures."""
