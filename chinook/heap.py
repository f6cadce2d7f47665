"""What a serving process made while starting (modules, the app, its clients and servers)
lives as long as the process. freeze_startup_objects() moves it out of the garbage
collector's generations, so that a full collection goes over what the requests made only.
Full collections come often where a process keeps many young objects a while, as spans
waiting in the batch processor for export: with every request traced, the gateway spent
13 µs a read collecting, 5 with its startup objects frozen (bench/README.md, "This round").
"""

import gc


def freeze_startup_objects():
    """Collects what starting left as garbage, then freezes the rest; call once, when the
    process is ready to serve (after the fork in a forking server)."""
    gc.collect()
    gc.freeze()
