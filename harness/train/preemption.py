"""Save a checkpoint when the scheduler says the job must stop, then let it requeue (STYLE practice 6).

SLURM sends SIGUSR2 before a timeout or a preemption (submitit's ``--signal=USR2@<delay>``) and
SIGTERM when it cancels; torchrun forwards SIGTERM to its workers.  A signal only sets a flag here;
the training loop checks it at the next step boundary (agreed by every rank, so all stop at the
same step), writes a checkpoint, and hands the signal on: to the handler that was installed before
(submitit's, which requeues the job into the same call), or, for the default handler, by raising
:class:`Preempted`.  The requeued job resumes from that checkpoint at the step it stopped.
"""
from __future__ import annotations

import signal
from typing import Any, Callable, Optional

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(SystemExit):
    """The job was asked to stop; a checkpoint at ``step`` was written first."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(128 + int(signum))
        self.signum, self.step = int(signum), int(step)


class PreemptionGuard:
    """Context manager: while active, SIGUSR2/SIGTERM are recorded instead of acted on."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signals = signals
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __enter__(self) -> "PreemptionGuard":
        import threading

        if threading.current_thread() is threading.main_thread():   # signals can only be caught there
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def hand_on(self, step: int) -> None:
        """After the checkpoint: restore the old handlers and deliver the signal to the one it was meant for."""
        signum = self.received
        previous = self._previous.get(signum)
        self.__exit__()
        if callable(previous) and previous not in (signal.SIG_IGN, signal.SIG_DFL):
            previous(signum, None)          # e.g. submitit: checkpoint() -> requeue -> exit
        raise Preempted(signum, step)


def stop_requested(guard: PreemptionGuard, agree: Callable[[bool], bool]) -> bool:
    """Whether any rank received a stop signal (``agree`` is :func:`harness.core.dist.any_rank`)."""
    return agree(guard.received is not None)
