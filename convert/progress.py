"""Progress bars for the long steps (distillation, the teacher pass, the mixed-precision search).

A bar appears only on a terminal and only once the step has run for DELAY_S seconds: short steps and
CI logs stay clean (their step reports are printed lines; a step that took longer than DELAY_S also
logs one line with its count and duration). Messages printed while a bar is up go through
`Bar.print`, above the bar.
"""
from __future__ import annotations

import time

DELAY_S = 3.0
CONSOLE = None          # a rich Console to draw on (tests pass one that records); None: rich's default


class Bar:
    def __init__(self, description: str, total: int, log=print, delay: float | None = None):
        self.description, self.total, self.log = description, total, log
        self.delay = DELAY_S if delay is None else delay
        self.done, self._progress, self._task, self._on_terminal = 0, None, None, None

    def __enter__(self) -> "Bar":
        self._t0 = time.perf_counter()
        return self

    def advance(self, n: int = 1, description: str | None = None) -> None:
        self.done += n
        if description:
            self.description = description
        if self._progress is None and time.perf_counter() - self._t0 >= self.delay and self._terminal():
            from rich.progress import Progress
            self._progress = Progress(transient=True, console=CONSOLE)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.done)
        elif self._progress is not None:
            self._progress.update(self._task, completed=self.done, description=self.description)

    def _terminal(self) -> bool:
        if self._on_terminal is None:        # asked once per bar: advance() runs once per training batch
            import rich
            self._on_terminal = (CONSOLE or rich.get_console()).is_terminal
        return self._on_terminal

    def print(self, message: str) -> None:
        if self._progress is None:
            self.log(message)
        else:                            # as printed, above the bar: no rich markup or highlighting
            self._progress.console.print(message, markup=False, highlight=False)

    def __exit__(self, exc_type, *_) -> None:
        if self._progress is not None:
            self._progress.stop()
        seconds = time.perf_counter() - self._t0
        if exc_type is None and seconds >= self.delay:      # a long step leaves one line in any log
            self.log(f"  {self.description}: {self.done}/{self.total} done in {seconds:.0f} s")
