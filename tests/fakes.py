"""Fakes at the protocol level: a runner that answers argv with captured outputs.

``FakeRunner`` is what adapters see instead of ``ProcessRunner``: rules map an argv *prefix* to a
``CommandResult`` (or a function that builds one, for answers that depend on earlier calls), and
every call is recorded so a test can assert exactly what was run, in which order. A call no rule
matches fails loudly (rc 127 and an entry in ``unexpected``) instead of silently agreeing.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

from iscsi_ha.controller.systems.runner import CommandResult

Answer = Union[CommandResult, Callable[[Tuple[str, ...]], CommandResult]]


def result(argv: Sequence[str], rc: int = 0, stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(tuple(argv), rc, stdout, stderr, 0.001, False)


class FakeRunner:
    def __init__(self) -> None:
        self.rules: List[Tuple[Tuple[str, ...], Answer]] = []
        self.calls: List[Tuple[str, ...]] = []
        self.spawned: List[Tuple[str, ...]] = []
        # (argv, how many calls had been run when it was stopped): ordering against ``calls``.
        self.stopped: List[Tuple[Tuple[str, ...], int]] = []
        self.unexpected: List[Tuple[str, ...]] = []

    def answer(
        self, prefix: Sequence[str], rc: int = 0, stdout: str = "", stderr: str = ""
    ) -> None:
        """Answer every argv starting with ``prefix``. Later rules win over earlier ones."""
        self.rules.insert(0, (tuple(prefix), result(prefix, rc, stdout, stderr)))

    def answer_with(
        self, prefix: Sequence[str], fn: Callable[[Tuple[str, ...]], CommandResult]
    ) -> None:
        self.rules.insert(0, (tuple(prefix), fn))

    def run(
        self, argv: Sequence[str], timeout: Optional[float] = None, input: Optional[str] = None
    ) -> CommandResult:
        argv = tuple(argv)
        self.calls.append(argv)
        for prefix, ans in self.rules:
            if argv[: len(prefix)] == prefix:
                res = ans(argv) if callable(ans) else ans
                return CommandResult(
                    argv, res.rc, res.stdout, res.stderr, res.duration, res.timed_out
                )
        self.unexpected.append(argv)
        return CommandResult(argv, 127, "", f"FakeRunner: no answer for {' '.join(argv)}", 0.0)

    def spawn(self, argv: Sequence[str], timeout: Optional[float] = None) -> "FakeBackground":
        self.spawned.append(tuple(argv))
        return FakeBackground(self, tuple(argv))

    def start_daemon(self, argv: Sequence[str], log_path: Optional[str] = None) -> Optional[int]:
        self.spawned.append(tuple(argv))
        return 4242

    def ran(self, *prefix: str) -> List[Tuple[str, ...]]:
        """The recorded calls that start with ``prefix``."""
        return [c for c in self.calls if c[: len(prefix)] == prefix]


class FakeBackground:
    """What ``FakeRunner.spawn`` started: ``stop()`` is recorded in the runner's ``stopped``."""

    def __init__(self, runner: FakeRunner, argv: Tuple[str, ...]) -> None:
        self.runner, self.argv = runner, argv

    def stop(self) -> None:
        self.runner.stopped.append((self.argv, len(self.runner.calls)))
