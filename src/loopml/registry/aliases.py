"""Version alias rules, as pure functions over {alias: version_id} maps.

- Format `[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]`, never numeric (it would shadow a version id).
- Unique per model: assigning an alias that another version holds moves it.
- Exactly one version always holds `default`; it can be moved, never removed.
- A merge is unordered: `["prod", "-staging"]` adds prod and removes staging; adding and
  removing the same alias cancels out.
"""

from __future__ import annotations

from loopml.errors import FailedPrecondition, InvalidArgument
from loopml.refs import ALIAS_RE

DEFAULT = "default"


def check_alias(alias: object, field: str = "versionAliases") -> str:
    if not isinstance(alias, str):
        raise InvalidArgument(f"{field}: every alias must be a string, got {alias!r}.")
    if alias.isdigit() or not ALIAS_RE.match(alias):
        raise InvalidArgument(
            f"{field}: invalid alias {alias!r}: aliases match [a-z][a-zA-Z0-9-]{{0,126}}[a-z0-9] "
            "and are never numeric."
        )
    return alias


def parse_aliases(value: object, field: str = "versionAliases", *, allow_removal: bool) -> list[str]:
    """Validate a list of aliases (`-alias` entries only when `allow_removal`)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{field} must be a list of strings.")
    out: list[str] = []
    for item in value:
        if allow_removal and isinstance(item, str) and item.startswith("-"):
            check_alias(item[1:], field)
        elif isinstance(item, str) and item.startswith("-"):
            raise InvalidArgument(f"{field}: {item!r}: alias removal is only allowed in mergeVersionAliases.")
        else:
            check_alias(item, field)
        out.append(item)
    return out


def merge(current: dict[str, str], version_id: str, changes: list[str]) -> dict[str, str]:
    """The alias map after merging `changes` into `version_id`'s aliases.

    `current` maps alias → version id for the whole model. Returns the new map; raises
    FailedPrecondition when the merge would leave no version holding `default`.
    """
    adds = {c for c in changes if not c.startswith("-")}
    removes = {c[1:] for c in changes if c.startswith("-")}
    both = adds & removes
    adds -= both
    removes -= both
    result = dict(current)
    for alias in removes:
        if result.get(alias) == version_id:
            if alias == DEFAULT:
                raise FailedPrecondition(
                    "The default alias cannot be removed: exactly one version always holds it. "
                    "Assign 'default' to another version instead."
                )
            del result[alias]
    for alias in adds:
        result[alias] = version_id  # moves it if another version held it
    return result


def aliases_of(alias_map: dict[str, str], version_id: str) -> list[str]:
    """The aliases a version holds, `default` first then alphabetical."""
    names = sorted(a for a, v in alias_map.items() if v == version_id)
    if DEFAULT in names:
        names.remove(DEFAULT)
        names.insert(0, DEFAULT)
    return names
