"""Driving ``tornws`` (and example) processes: line-by-line output with timeouts."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from typing import IO, Any

from conftest import ROOT

TIMEOUT = 10.0


class Lines:
    """Reads a process's stream in a thread so tests can wait for a line with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:  # closed at end of stream, by the thread that reads it
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self, timeout: float = TIMEOUT) -> str | None:
        """The next line; ``None`` at end of stream; AssertionError after ``timeout``."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s; so far: {self.seen}") from None
        if line is not None:
            self.seen.append(line)
        return line

    def expect(self, wanted: str, timeout: float = TIMEOUT) -> str:
        """Skip lines until one contains ``wanted``; return it."""
        while True:
            line = self.next(timeout)
            if line is None:
                raise AssertionError(f"stream ended before {wanted!r}; saw {self.seen}")
            if wanted in line:
                return line


def tornws_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tornws", *args]


def run(
    args: list[str], stdin: str = "", timeout: float = 30.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run to completion with ``stdin`` piped; bounded by ``timeout``."""
    return subprocess.run(
        args,
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


class Interactive:
    """A process with stdin/stdout/stderr pipes kept open, for conversations."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=ROOT,
        )
        assert self.process.stdout and self.process.stderr
        self.out = Lines(self.process.stdout)
        self.err = Lines(self.process.stderr)

    def send(self, line: str) -> None:
        assert self.process.stdin
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Close stdin (end of input) and wait for the exit status."""
        assert self.process.stdin
        self.process.stdin.close()
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
