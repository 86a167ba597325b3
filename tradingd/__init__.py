"""tradingd: a supervised, single-process crypto trading daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tradingd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
