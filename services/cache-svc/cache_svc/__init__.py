"""The cache service: owns Redis and the write-back logic."""
