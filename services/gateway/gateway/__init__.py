"""The HTTP gateway: JSON over HTTP in front of the cache service, nothing else."""
