"""x402-aggregator: one x402 facilitator endpoint in front of many."""

from ._version import __version__
from .aggregator import Aggregator
from .client import AggregatorClient, AggregatorClientSync
from .config import Config, load_config
from .errors import AggregatorError, ConfigError, RequestError, TransportError
from .outcome import Outcome
from .replies import Reply
from .upstream import Upstream

__all__ = [
    "Aggregator",
    "AggregatorClient",
    "AggregatorClientSync",
    "AggregatorError",
    "Config",
    "ConfigError",
    "Outcome",
    "Reply",
    "RequestError",
    "TransportError",
    "Upstream",
    "__version__",
    "load_config",
]
