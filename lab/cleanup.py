"""Undo everything the lab made, in reverse order, also when a step failed (a stack of undo actions)."""

from __future__ import annotations

from collections.abc import Callable

from lab.progress import say


class Cleanup:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))

    def run(self) -> list[str]:
        """Run every undo action, newest first; returns what could not be undone (and keeps going)."""
        failed: list[str] = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                say(f"cleanup: {what} failed: {exc}")
                failed.append(what)
        return failed
