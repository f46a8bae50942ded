"""Resource names, ids, references like "churn@default", and timestamps."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from loopml.errors import InvalidArgument

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MODEL_ID_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,62}\Z")
ENDPOINT_ID_RE = re.compile(r"^(?:[a-z][a-z0-9-]{0,62}|[1-9][0-9]{0,8})\Z")
ALIAS_RE = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]\Z")
VERSION_RE = re.compile(r"^[1-9][0-9]*\Z")
GENERIC_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")
# a decimal integer in a string (use with fullmatch): ASCII digits only, since str.isdigit() is
# also True for '²' or fullwidth '１', which int() refuses or reads
INTEGER_RE = re.compile(r"-?[0-9]+")


def check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidArgument(f"Invalid {what} {value!r}: must match {pattern.pattern}.")
    return value


def check_parent(project: str, location: str) -> None:
    check(PROJECT_RE, project, "project")
    check(LOCATION_RE, location, "location")


def parent_name(project: str, location: str) -> str:
    return f"projects/{project}/locations/{location}"


def new_numeric_id(digits: int = 10) -> str:
    """A random numeric id without a leading zero (Vertex style)."""
    first = str(secrets.randbelow(9) + 1)
    rest = "".join(str(secrets.randbelow(10)) for _ in range(digits - 1))
    return first + rest


def new_deployed_model_id() -> str:
    return new_numeric_id(10)[:10]


def new_endpoint_id() -> str:
    return new_numeric_id(9)


@dataclass(frozen=True)
class ModelRef:
    """`model`, `model@3` or `model@alias`."""

    model_id: str
    version: str | None = None  # a version id or an alias; None = the default version

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name = text.rsplit("/models/", 1)[-1]
        name = name.replace("%40", "@")
        model_id, _, version = name.partition("@")
        return cls(model_id=model_id, version=version or None)

    def __str__(self) -> str:
        return f"{self.model_id}@{self.version}" if self.version else self.model_id


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(ts: datetime | None) -> str | None:
    """RFC 3339 with a `Z` offset, as the Google clients parse it."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
