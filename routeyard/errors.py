"""One error hierarchy for the whole product.

    RouteyardError
    ├── UserError              a user can fix it: the CLI prints one line (exit 2), the API answers 4xx
    │   ├── InvalidInput       a bad file, field, option or setting (422)
    │   │   ├── DataError      outcome / preference data that cannot be read
    │   │   └── UnknownPrice   a model with no price, so its spend could not be counted
    │   ├── NotFound           no such job, version, schedule, item (404; another tenant's too)
    │   └── Conflict           the request contradicts what is stored, e.g. a reused idempotency key (409)
    ├── Unavailable            a service Routeyard needs cannot be reached: the database, the broker, a model
    │                          endpoint (the CLI prints one line naming the setting, exit 1; the API answers 503)
    └── (anything else)        a bug: the CLI shows the traceback with --debug, the API answers 500

Each front door maps `UserError` once (jobs/cli/context.py, jobs/api/app.py); nothing matches on messages.
"""

from __future__ import annotations


class RouteyardError(Exception):
    """Base of every error Routeyard raises on purpose."""


class UserError(RouteyardError):
    """Something the user can fix; the message says what and where (file, line, field or setting)."""

    http_status = 400


class InvalidInput(UserError, ValueError):
    """A bad file, line, field, option or setting. A ValueError too, so library code that expects one works."""

    http_status = 422


class DataError(InvalidInput):
    """Outcome or preference data that cannot be read or used."""


class UnknownPrice(InvalidInput):
    """A model has no price, so its spend could not be counted."""


class NotFound(UserError, LookupError):
    """No such job, item, router version or schedule; another tenant's is reported exactly the same way."""

    http_status = 404


class Conflict(UserError):
    """The request contradicts what is stored (an idempotency key reused for a different request)."""

    http_status = 409


class Unavailable(RouteyardError):
    """A service Routeyard needs cannot be reached; the message names the setting that points at it."""

    http_status = 503
    retry_after_s = 5  # the API's Retry-After: a database or broker back from a restart answers by then


class JobInterrupted(RouteyardError):
    """Ctrl-C stopped a job this process was running; the message says what is kept and how to go on. Raised in
    place of the KeyboardInterrupt once the job is put in order (the CLI's framework would swallow that one)."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
