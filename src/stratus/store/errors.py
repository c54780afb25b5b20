"""What store functions raise, independent of the database driver underneath."""


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or did not answer in time. Callers fail closed (503)."""


class Conflict(StoreError):
    """A uniqueness or reference rule was broken (a name taken, a row that no longer exists)."""
