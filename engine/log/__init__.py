"""The segmented partition log."""
