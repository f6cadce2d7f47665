"""What the tests and bench/ share: the five processes on free ports with stores of their own
(stack.py), private, killable stores (stores.py, broker.py), and clients of the system
(api.py, grpcurl.py, metrics.py, otlp.py). It imports nothing from tests/."""
