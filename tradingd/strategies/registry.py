"""Strategies are found by name through the ``tradingd.strategies`` entry-point group.

Ours are declared in tradingd's pyproject.toml; a third-party distribution adds one the same
way in its own::

    [project.entry-points."tradingd.strategies"]
    mean_revert = "my_package.mean_revert:MeanRevert"
"""

from __future__ import annotations

from importlib.metadata import entry_points

from tradingd.strategies.api import Strategy

ENTRY_POINT_GROUP = "tradingd.strategies"


class UnknownStrategy(LookupError):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"expected a registered strategy ({', '.join(available) or 'none installed'}), "
            f"found {name!r}"
        )
        self.name = name
        self.available = available


def available_strategies() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_strategy(name: str) -> type[Strategy]:
    """The class registered under ``name``; UnknownStrategy lists the available ones, and a
    registered object that is not a Strategy subclass is refused the same way (TypeError)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded = ep.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Strategy)):
                raise TypeError(
                    f"entry point {ENTRY_POINT_GROUP}:{name} = {ep.value}: expected a "
                    f"subclass of tradingd.strategies.api.Strategy, found {loaded!r}"
                )
            return loaded
    raise UnknownStrategy(name, available_strategies())
