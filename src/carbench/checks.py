"""Value checks shared by the config check and the components that read their own settings.

A config value of the wrong kind must stop a run with the key's name and a fix, never run as
something else: a float count such as `seed=1.7` would silently become `int(1.7) = 1`.
"""

from __future__ import annotations


def check_whole(key: str, value: object, minimum: int, example: int, null: str = "") -> int:
    """`value` if it is a whole number ≥ `minimum` (bools are not), else a ValueError naming `key` and a fix.

    `null` is added to the bound in the message (" or null") where the caller allows None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer ≥ {minimum}{null}, got {value!r} "
                         f"({type(value).__name__}); set e.g. {key}={example}")
    return value
