"""Everything the gateway asks of Redis: publishing, the replay buffer, Pub/Sub subscriptions, the embedded server.

gateway.brokers.protocol draws the boundary; ``broker_for`` builds the implementation the settings call for.
"""

from __future__ import annotations

from gateway.brokers.cluster import ClusterBroker
from gateway.brokers.mode import BrokerModeError, resolve_cluster_mode
from gateway.brokers.protocol import Broker
from gateway.brokers.single import SingleNodeBroker
from gateway.config import Settings

__all__ = ["Broker", "BrokerModeError", "broker_for", "resolve_cluster_mode"]


def broker_for(settings: Settings) -> Broker:
    """The broker for ``settings``; with redis_cluster "auto" this asks Redis first (see resolve_cluster_mode)."""
    if settings.redis_cluster == "auto":
        settings = resolve_cluster_mode(settings)
    return ClusterBroker(settings) if settings.redis_cluster == "on" else SingleNodeBroker(settings)
