"""Kafka RecordBatch v2 codec: a leaf package that imports nothing else from the engine."""
