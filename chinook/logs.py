"""One log format for every process, named after the service."""

import logging
import sys


def configure_logging(service: str, level: str = "INFO") -> logging.Logger:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
        force=True,
    )
    return logging.getLogger(service)
