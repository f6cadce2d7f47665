"""Code shared by every service: configuration, logging, the entity registry,
gRPC server and client helpers, Celery settings, and the generated stubs."""
