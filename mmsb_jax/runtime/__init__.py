"""Runtime: the Bus (commit pipeline over a durable store) and its telemetry."""

from mmsb_jax.runtime.bus import Bus, CommitInfo, Subscription, state_at
from mmsb_jax.runtime.telemetry import Telemetry, page_memory

__all__ = ["Bus", "CommitInfo", "Subscription", "Telemetry", "page_memory", "state_at"]
