import pytest

from stratus.store import Store
from tests.pg import scratch_database


@pytest.fixture(scope="module")
def pg_url():
    with scratch_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A migrated store on each backend (one PostgreSQL database per module; names are unique)."""
    if request.param == "sqlite":
        s = Store.open(f"sqlite:///{tmp_path / 'stratus.db'}")
    else:
        s = Store.open(request.getfixturevalue("pg_url"))
    yield s
    s.close()
