"""Beyond one machine: streams placed on a Ray cluster (``placement``, ``worker``), results stored durably in NATS
JetStream (``jetstream``), JetStream servers started for a site or a test (``nats_server``), and the site file
(``config``).  Ray and nats-py are imported only where they are used."""
from __future__ import annotations

from amodal.engine.cluster.config import ClusterSettings, JetStreamSettings, SiteConfig, StreamResources

__all__ = ["ClusterSettings", "JetStreamSettings", "SiteConfig", "StreamResources"]
