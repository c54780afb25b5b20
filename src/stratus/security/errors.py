"""What security functions raise; the gateway maps each to one HTTP status (api/auth.py)."""


class SecurityError(Exception):
    """Base class. The message is safe to show the caller: it never holds a secret."""


class Unauthenticated(SecurityError):
    """No usable credential (missing, malformed, unknown, expired, revoked): 401, always the same."""


class Forbidden(SecurityError):
    """Authenticated, but not allowed: 403. `field` names the request field at fault, if one is."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(SecurityError):
    """No such thing, or not visible to this caller (the two look the same): 404."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Invalid(SecurityError):
    """A bad value in the request: 400."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class Conflict(SecurityError):
    """The request clashes with the current state (a name taken, the last admin): 409."""


class Unavailable(SecurityError):
    """A dependency needed to decide (the database, an issuer's JWKS) cannot be reached: 503."""
