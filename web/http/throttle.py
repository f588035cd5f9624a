"""A login rate limit: too many wrong passwords from one client lock it out for a while."""

from __future__ import annotations

from collections import OrderedDict, deque

# Five wrong passwords a minute from one client is a person mistyping; more is guessing.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 60.0
# Clients remembered at once; the oldest are forgotten first, so a flood of addresses
# cannot grow memory without bound.
MAX_TRACKED_CLIENTS = 10_000


class LoginThrottle:
    """Count failed logins per client; lock a client out after too many in a window."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        lockout_s: float = LOCKOUT_S,
        max_clients: int = MAX_TRACKED_CLIENTS,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}

    def retry_after_s(self, client: str, now: float) -> float:
        """Seconds until `client` may try again; 0 when it may try now."""
        until = self._locked_until.get(client)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked_until[client]
            return 0.0
        return until - now

    def record_failure(self, client: str, now: float) -> None:
        failures = self._failures.pop(client, None) or deque()
        failures.append(now)
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        self._failures[client] = failures  # re-inserted last: most recently seen
        if len(failures) >= self.max_failures:
            self._locked_until[client] = now + self.lockout_s
            failures.clear()
        while len(self._failures) > self.max_clients:
            oldest, _ = self._failures.popitem(last=False)
            self._locked_until.pop(oldest, None)

    def record_success(self, client: str) -> None:
        self._failures.pop(client, None)
        self._locked_until.pop(client, None)
