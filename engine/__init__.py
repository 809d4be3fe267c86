"""Moldau's broker core: storage, topics, groups and views. Knows nothing of gRPC."""
