"""Where each key of a TOML document sits: key paths to line numbers, for error messages.

A small scanner over text that `tomllib` has already accepted; it follows tables, arrays of
tables, dotted keys, inline tables and arrays, and never needs to understand values beyond where
they end.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib
from collections.abc import Mapping, Sequence

PathSegment = str | int
KeyPath = tuple[PathSegment, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def render_path(path: Sequence[PathSegment]) -> str:
    """A key path as an admin reads it: `plans[1].milestones[0].percent`, `clients."A B".fees`."""
    out: list[str] = []
    for segment in path:
        if isinstance(segment, int):
            out.append(f"[{segment}]")
            continue
        text = segment if _BARE_KEY.fullmatch(segment) else _quote(segment)
        out.append(text if not out else f".{text}")
    return "".join(out)


def _quote(key: str) -> str:
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class KeyLines:
    """Line numbers of the keys, tables and array elements of one TOML text."""

    def __init__(self, lines: Mapping[KeyPath, int]) -> None:
        self._lines = dict(lines)

    @classmethod
    def scan(cls, text: str) -> KeyLines:
        """Index `text`; on text the scanner cannot follow, an empty (or partial) index."""
        scanner = _Scanner(text)
        with contextlib.suppress(_ScanError):
            scanner.document()
        return cls(scanner.lines)

    def exact(self, path: Sequence[PathSegment]) -> int | None:
        return self._lines.get(tuple(path))

    def nearest(self, path: Sequence[PathSegment]) -> int | None:
        """The line of `path`, else of its closest enclosing key that is written in the file."""
        key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return None


class _ScanError(Exception):
    pass


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.lines: dict[KeyPath, int] = {}
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._table: KeyPath = ()
        self._aot_count: dict[KeyPath, int] = {}
        self._aot_current: dict[KeyPath, int] = {}

    # ------------------------------------------------------------------ helpers

    def _line(self, pos: int) -> int:
        return bisect.bisect_right(self._line_starts, pos)

    def _record(self, path: KeyPath, pos: int) -> None:
        self.lines.setdefault(path, self._line(pos))

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _skip_space(self, newlines: bool) -> None:
        """Skip blanks and comments (and newlines when inside arrays or between statements)."""
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.i += 1
            elif ch == "#":
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            else:
                return

    def _expect(self, ch: str) -> None:
        if self._peek() != ch:
            raise _ScanError(f"expected {ch!r} at {self.i}")
        self.i += 1

    # ------------------------------------------------------------------ grammar

    def document(self) -> None:
        while True:
            self._skip_space(newlines=True)
            if self.i >= len(self.s):
                return
            if self._peek(2) == "[[":
                self._array_table_header()
            elif self._peek() == "[":
                self._table_header()
            else:
                self._key_value(self._table)

    def _resolve(self, keys: list[str]) -> list[PathSegment]:
        """Prefix keys with the current element index of every array of tables they pass."""
        resolved: list[PathSegment] = []
        for key in keys:
            resolved.append(key)
            current = self._aot_current.get(tuple(resolved))
            if current is not None:
                resolved.append(current)
        return resolved

    def _table_header(self) -> None:
        start = self.i
        self.i += 1
        keys = self._key()
        self._skip_space(newlines=False)
        self._expect("]")
        path = tuple(self._resolve(keys))
        self._record(path, start)
        self._table = path

    def _array_table_header(self) -> None:
        start = self.i
        self.i += 2
        keys = self._key()
        self._skip_space(newlines=False)
        self._expect("]")
        self._expect("]")
        array = tuple([*self._resolve(keys[:-1]), keys[-1]])
        index = self._aot_count.get(array, 0)
        self._aot_count[array] = index + 1
        self._aot_current[array] = index
        # a new element starts afresh: forget indices of arrays nested in earlier elements
        for nested in [
            k for k in self._aot_current if len(k) > len(array) and k[: len(array)] == array
        ]:
            del self._aot_current[nested]
        self._record(array, start)
        self._record((*array, index), start)
        self._table = (*array, index)

    def _key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self._skip_space(newlines=False)
            keys.append(self._simple_key())
            self._skip_space(newlines=False)
            if self._peek() != ".":
                return keys
            self.i += 1

    def _simple_key(self) -> str:
        ch = self._peek()
        if ch in "\"'":
            start = self.i
            self._string()
            literal = self.s[start : self.i]
            value = tomllib.loads(f"k = {literal}")["k"]
            return str(value)
        match = _BARE_KEY.match(self.s, self.i)
        if not match:
            raise _ScanError(f"expected a key at {self.i}")
        self.i = match.end()
        return match.group()

    def _key_value(self, table: KeyPath) -> None:
        start = self.i
        keys = self._key()
        path: KeyPath = (*table, *keys)
        for depth in range(len(table) + 1, len(path) + 1):
            self._record(path[:depth], start)
        self._skip_space(newlines=False)
        self._expect("=")
        self._skip_space(newlines=False)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        ch = self._peek()
        if ch in "\"'":
            self._string()
        elif ch == "[":
            self._array(path)
        elif ch == "{":
            self._inline_table(path)
        else:
            match = re.compile(r"[^,\]}\n#]*").match(self.s, self.i)
            assert match is not None  # the pattern matches the empty string
            self.i = match.end()

    def _string(self) -> None:
        quote = self._peek()
        if self._peek(3) == quote * 3:
            self.i += 3
            while self.i < len(self.s):
                if quote == '"' and self.s[self.i] == "\\":
                    self.i += 2
                elif self._peek(3) == quote * 3:
                    self.i += 3
                    # a closing delimiter may carry up to two more quote characters
                    while self._peek() == quote:
                        self.i += 1
                    return
                else:
                    self.i += 1
            raise _ScanError("unterminated multi-line string")
        self.i += 1
        while self.i < len(self.s):
            ch = self.s[self.i]
            if quote == '"' and ch == "\\":
                self.i += 2
            elif ch == quote:
                self.i += 1
                return
            else:
                self.i += 1
        raise _ScanError("unterminated string")

    def _array(self, path: KeyPath) -> None:
        self._expect("[")
        index = 0
        while True:
            self._skip_space(newlines=True)
            if self._peek() == "]":
                self.i += 1
                return
            element = (*path, index)
            self._record(element, self.i)
            self._value(element)
            index += 1
            self._skip_space(newlines=True)
            if self._peek() == ",":
                self.i += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._expect("{")
        while True:
            self._skip_space(newlines=True)
            if self._peek() == "}":
                self.i += 1
                return
            self._key_value(path)
            self._skip_space(newlines=True)
            if self._peek() == ",":
                self.i += 1
