"""Celery workers: the write-back worker flushes batches, the duplication worker
multiplies the album table. Both work through the gRPC services only."""
