import pytest

from chinook.entities import ENTITIES


@pytest.fixture
def registry():
    """The entity registry, as it was again after the test."""
    before = dict(ENTITIES)
    yield ENTITIES
    ENTITIES.clear()
    ENTITIES.update(before)
