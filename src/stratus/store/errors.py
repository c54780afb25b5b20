"""What store functions raise, independent of the database driver underneath."""


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or did not answer in time. Callers fail closed (503).
    `dropped`: a connection in use was lost (the server restarted or ended it): a fresh one may
    well work, so a read may be tried once more (`Store.read`)."""

    def __init__(self, message: str, dropped: bool = False):
        super().__init__(message)
        self.dropped = dropped


class Conflict(StoreError):
    """A uniqueness or reference rule was broken (a name taken, a row that no longer exists)."""
