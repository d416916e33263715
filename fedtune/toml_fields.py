"""Validated reading of TOML tables: every error names the file, the field and the problem.

Configuration is parsed once at the edge into frozen dataclasses (STYLE.md); this module holds
the small reader those parsers share, so that a malformed federation, policy or scenario file
always produces the same precise message, e.g.::

    federation.toml: job.training.batch_size: expected an integer >= 1, found 'many'
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or has an invalid field."""

    def __init__(self, file: str | Path, field: str, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        where = f"{self.file}: {field}: " if field else f"{self.file}: "
        super().__init__(where + problem)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into :class:`ConfigError`."""
    p = Path(path)
    try:
        with p.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(p, "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(p, "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib decodes before it parses
        raise ConfigError(p, "", f"not valid TOML: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(p, "", f"cannot read: {exc.strerror}") from None


_MISSING = object()


@dataclass
class Fields:
    """A view of one TOML table that reads typed, validated fields and rejects unknown keys."""

    file: str
    prefix: str
    table: dict[str, Any]

    def __post_init__(self) -> None:
        self._read: set[str] = set()

    def _name(self, key: str) -> str:
        if not key:  # an error about the whole table names the table
            return self.prefix
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self._name(key), problem)

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        if key in self.table:
            return self.table[key]
        if default is _MISSING:
            raise self.error(key, "required field is missing")
        return default

    def sub(self, key: str, required: bool = False) -> Fields:
        value = self._get(key, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, found {value!r}")
        return Fields(self.file, self._name(key), value)

    def string(self, key: str, default: Any = _MISSING, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, found {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}; found {value!r}")
        return value

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None,
                maximum: int | None = None) -> int:
        value = self._get(key, default)
        bounds = _bounds_text(minimum, maximum)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer{bounds}, found {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(key, f"expected an integer{bounds}, found {value!r}")
        return value

    def number(self, key: str, default: Any = _MISSING, minimum: float | None = None,
               maximum: float | None = None, exclusive_minimum: bool = False) -> float:
        value = self._get(key, default)
        bounds = _bounds_text(minimum, maximum, exclusive_minimum)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number{bounds}, found {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise self.error(key, f"expected a finite number, found {value!r}")
        too_low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
        if too_low or (maximum is not None and value > maximum):
            raise self.error(key, f"expected a number{bounds}, found {value!r}")
        return value

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, found {value!r}")
        return value

    def string_list(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.error(key, f"expected a list of strings, found {value!r}")
        return tuple(value)

    def int_list(self, key: str, default: Any = _MISSING) -> tuple[int, ...]:
        value = self._get(key, default)
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise self.error(key, f"expected a list of positive integers, found {value!r}")
        return tuple(value)

    def table_list(self, key: str) -> list[Fields]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "expected an array of tables ([[...]])")
        return [Fields(self.file, f"{self._name(key)}[{i}]", v) for i, v in enumerate(value)]

    def reject_unknown(self) -> None:
        """Fail on keys nobody read: a typo must not silently fall back to a default."""
        unknown = sorted(set(self.table) - self._read)
        if unknown:
            raise self.error(unknown[0], "unknown field (check the spelling)")


def _bounds_text(minimum: float | None, maximum: float | None, exclusive: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return (" " + " and ".join(parts)) if parts else ""
