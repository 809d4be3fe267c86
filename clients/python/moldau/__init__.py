"""Moldau: the Python client for the Moldau event streaming engine."""
