"""The state of a dependency that can go away (Redis, a peer): up, down, or not yet known.

One :class:`Outage` per dependency a component uses. The component reports what happened
(:meth:`Outage.failed`, :meth:`Outage.recovered`) and asks whether to try again
(:meth:`Outage.should_probe`); the outage keeps the state, the backoff and the log::

    UNKNOWN ──recovered()──► UP ◄──recovered()── DOWN
       │                      │                  ▲  │
       └──────failed()────────┴──failed()────────┘  └─ failed() on a probe: backoff doubles

* **One warning per outage**, when it starts (UNKNOWN or UP → DOWN), and **one info line on
  recovery** (DOWN → UP). UNKNOWN → UP (the first connection) logs nothing.
* **Backoff**: while DOWN, :meth:`Outage.should_probe` lets one caller at a time try the
  dependency again once the backoff has passed. The backoff starts at ``initial_s`` when
  the outage starts and doubles on every failed probe up to ``max_s``. Failures of calls
  that were not the probe (calls already in flight when the outage started) neither log
  nor lengthen the backoff.
* ``on_change(up)`` (optional) is called on every change of :attr:`Outage.is_up`, e.g. to
  set a gauge.

Not thread-safe: one instance per event loop (calls between awaits are atomic there).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from backend import keys


class State(enum.Enum):
    """Where a dependency stands, as far as its user knows."""

    UNKNOWN = "unknown"  #: not tried yet (or not connected yet)
    UP = "up"  #: the last call succeeded
    DOWN = "down"  #: in an outage: calls are served another way until a probe succeeds


class Outage:
    """Up/down state, probe backoff and logging of one dependency (module docstring).

    Args:
        name: what is down, as the log lines start with it, e.g. ``"cache: Redis at
            redis://127.0.0.1:6379/0"`` (no credentials: it is logged).
        logger: where the warning and the info line go (the component's own logger).
        while_down: what the component does during an outage, appended to the warning,
            e.g. ``"serving from L1 and the database"``.
        on_recovery: appended to the recovery info line, e.g. ``"L2 resumed"``.
        state: the state to start in: ``State.UP`` for a dependency assumed present until
            a call fails, ``State.UNKNOWN`` for one that must connect first.
        initial_s: first backoff, seconds (default :data:`backend.keys.RECONNECT_INITIAL_S`).
        max_s: longest backoff, seconds (default :data:`backend.keys.RECONNECT_MAX_S`).
        clock: monotonic seconds (tests pass a fake).
        on_change: called with the new :attr:`is_up` whenever it changes.

    Raises:
        ValueError: ``initial_s`` not positive, or ``max_s`` below ``initial_s``.
    """

    def __init__(
        self,
        name: str,
        *,
        logger: logging.Logger,
        while_down: str,
        on_recovery: str,
        state: State = State.UP,
        initial_s: float = keys.RECONNECT_INITIAL_S,
        max_s: float = keys.RECONNECT_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(
                f"backoff must satisfy 0 < initial_s <= max_s (got {initial_s}, {max_s})"
            )
        self.name = name
        self._log = logger
        self._while_down = while_down
        self._on_recovery = on_recovery
        self._state = state
        self._initial_s = initial_s
        self._max_s = max_s
        self._clock = clock
        self._on_change = on_change
        self._backoff_s = initial_s
        self._retry_at = 0.0
        self._probing = False

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def is_up(self) -> bool:
        """True in state UP only (UNKNOWN and DOWN are not up)."""
        return self._state is State.UP

    @property
    def backoff_s(self) -> float:
        """The current backoff, seconds: ``initial_s`` doubled per failed probe, at most
        ``max_s``."""
        return self._backoff_s

    @property
    def probing(self) -> bool:
        """Whether a caller holds the probe (see :meth:`should_probe`)."""
        return self._probing

    def wait_s(self, now: float | None = None) -> float:
        """Seconds until the next probe is due (0.0 when not DOWN or already due)."""
        if self._state is not State.DOWN:
            return 0.0
        return max(0.0, self._retry_at - (self._clock() if now is None else now))

    def should_probe(self, now: float | None = None) -> bool:
        """Whether the caller should try the dependency now.

        Always True unless DOWN. While DOWN: True for one caller once the backoff has
        passed (it then holds the probe until it reports :meth:`failed` or
        :meth:`recovered`, or gives it back with :meth:`end_probe`), False for everyone
        else, who should serve the call another way.

        Args:
            now: the clock's time (default: read the clock).
        """
        if self._state is not State.DOWN:
            return True
        if self._probing or (self._clock() if now is None else now) < self._retry_at:
            return False
        self._probing = True
        return True

    def end_probe(self) -> None:
        """Give the probe back without a verdict (the probing call was cancelled, or failed
        for a reason that says nothing about the dependency). Idempotent."""
        self._probing = False

    def failed(self, exc: BaseException) -> bool:
        """Report a failed call.

        From UNKNOWN or UP: the outage starts (one warning, backoff ``initial_s``). While
        DOWN: a failed probe doubles the backoff (up to ``max_s``) and gives the probe
        back; any other failure is a call from before the outage and changes nothing.

        Args:
            exc: the error, named in the log.

        Returns:
            True when this call started the outage.
        """
        now = self._clock()
        if self._state is State.DOWN:
            if self._probing:
                self._probing = False
                self._backoff_s = min(self._backoff_s * 2, self._max_s)
                self._retry_at = now + self._backoff_s
                self._log.debug(
                    "%s still unreachable (%s: %s); next try in %.2f s",
                    self.name, type(exc).__name__, exc, self._backoff_s,
                )
            return False
        self._state = State.DOWN
        self._probing = False
        self._backoff_s = self._initial_s
        self._retry_at = now + self._backoff_s
        self._log.warning(
            "%s unreachable (%s: %s); %s", self.name, type(exc).__name__, exc, self._while_down
        )
        self._changed(False)
        return True

    def recovered(self) -> bool:
        """Report a successful call (or connection).

        DOWN → UP logs one info line and resets the backoff; UNKNOWN → UP logs nothing.

        Returns:
            True when this call ended an outage.
        """
        was = self._state
        if was is State.UP:
            return False
        self._state = State.UP
        self._probing = False
        self._backoff_s = self._initial_s
        if was is State.DOWN:
            self._log.info("%s answers again; %s", self.name, self._on_recovery)
        self._changed(True)
        return was is State.DOWN

    def _changed(self, up: bool) -> None:
        if self._on_change is not None:
            self._on_change(up)
