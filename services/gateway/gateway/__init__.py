"""The HTTP gateway: JSON over HTTP in front of the cache service, nothing else."""

# Whose certificate it presents under GRPC_TLS_DIR, and who it is to cache-svc (chinook.callers).
IDENTITY = "gateway"
