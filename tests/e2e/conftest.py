import pytest

from testkit.api import Api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def api(stack):
    return Api(stack)
