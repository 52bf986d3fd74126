"""Prometheus metrics, and the /metrics endpoint that serves them.

With several uvicorn workers each process writes its values to files under PROMETHEUS_MULTIPROC_DIR (the ``serve``
command sets it up), and /metrics, whichever worker answers it, adds them all up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

OPEN_STREAMS = Gauge("sse_open_streams", "SSE streams open now", multiprocess_mode="livesum")
HTTP_CONNECTIONS = Gauge(
    "sse_http_connections", "HTTP connections open now, streams or not", multiprocess_mode="livesum"
)
STREAMS_CLOSED = Counter("sse_streams_closed_total", "SSE streams ended, by reason", ["reason"])
MESSAGES_IN = Counter("sse_messages_in_total", "Events received from Redis (live and catch-up)")
FRAMES_OUT = Counter("sse_frames_out_total", "Event frames written to clients (backlog included)")
WRITES_WAITED = Counter(
    "sse_writes_waited_total", "Writes that had to wait for a client's socket to drain (a slow reader, not yet evicted)"
)
EVICTIONS = Counter("sse_evictions_total", "Clients disconnected for falling behind, by reason", ["reason"])
REPLAYS = Counter(
    "sse_replays_total", "Streams resumed from a Last-Event-ID: hit (all still buffered) or miss (a gap)", ["result"]
)
BACKLOG_SOURCES = Counter(
    "sse_backlog_sources_total",
    "Channels of starting streams whose backlog was served from memory (the ring of recent events) or read from Redis",
    ["source"],
)
BACKLOG_READS = Counter(
    "sse_backlog_reads_total",
    "Backlog pages wanted from Redis: read, or shared with a stream already reading it",
    ["how"],
)
GAP_EVENTS = Counter("sse_gap_events_total", "gap events sent")
CLUSTER_NODE_UP = Gauge(
    "sse_cluster_node_up",
    "Per Redis Cluster primary this process subscribes on: 1 while its Pub/Sub connection is up",
    ["node"],
    multiprocess_mode="livemax",
)
TOPOLOGY_REFRESHES = Counter("sse_cluster_topology_refreshes_total", "Times the cluster's slot map was read again")
RESUBSCRIPTIONS = Counter(
    "sse_cluster_resubscriptions_total", "Channels subscribed again after a slot moved or a node dropped them"
)
MISSED_LIVE = Counter(
    "sse_missed_live_total", "Live messages found missing by the previous id of the next one, then read from the buffer"
)
RAW_MESSAGES_DROPPED = Counter(
    "sse_raw_messages_dropped_total",
    "Messages of bare Redis channels (SSE_GATEWAY_RAW_CHANNELS) dropped, by reason (too_large: over max_body_bytes)",
    ["reason"],
)
REDIS_RECONNECTS = Counter("sse_redis_reconnects_total", "Times the Pub/Sub connection to Redis was lost or refused")
PUBLISHES = Counter("sse_publishes_total", "Publish requests, by outcome", ["outcome"])
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PUBLISH_SECONDS = Histogram(
    "sse_publish_seconds", "Time to store and publish one event in Redis", buckets=LATENCY_BUCKETS
)
BATCH_SECONDS = Histogram(
    "sse_publish_batch_seconds", "Time to store and publish one batch (POST /publish) in Redis", buckets=LATENCY_BUCKETS
)
FANOUT_LAG_SECONDS = Histogram(
    "sse_fanout_lag_seconds",
    "From an event's arrival from Redis to the write that carries it to a client (the oldest of each flush turn)",
    buckets=LATENCY_BUCKETS,
)
REFUSED = Counter("sse_refused_total", "Requests refused by a limit, by limit", ["limit"])


async def metrics(request: Request) -> Response:
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def process_exited() -> None:
    """Drop this process's live gauges from the multiprocess totals."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())
