"""An in-process Kafka for tests: the librdkafka mock cluster, driven through its C API.

No Kafka server is needed. The ``confluent-kafka`` wheel bundles librdkafka, which contains a mock
cluster speaking the real Kafka protocol on 127.0.0.1 (random ports): produce, fetch, consumer groups
with rebalancing, committed offsets and idempotent producers all work against it. ``confluent_kafka``
only exposes it as ``test.mock.num.brokers``; the C functions behind it (reached here with ctypes)
also let tests create topics with a chosen partition count, make new consumer groups join at once
(the initial rebalance delay is 0 here instead of 3 s) and take brokers down and up again.

What the mock does not do, and a real cluster does: the admin CreateTopics and DeleteRecords requests
(answered "unsupported"), transactions, and anything about durability across restarts.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mainspring._compat import require
from mainspring.errors import ServiceUnavailableError

__all__ = ["MockKafkaCluster", "mock_kafka_cluster"]

_ERRSTR_SIZE = 512
_RD_KAFKA_PRODUCER = 0


def _load_librdkafka() -> ctypes.CDLL:
    """Open the librdkafka shared library that ``confluent_kafka`` itself loaded."""
    package = require("confluent_kafka", extra="kafka", feature="the Kafka mock cluster")
    root = os.path.dirname(os.path.dirname(os.path.abspath(str(package.__file__))))
    # Linux wheels keep it in confluent_kafka.libs (auditwheel), macOS wheels in confluent_kafka/.dylibs.
    patterns = (
        os.path.join(root, "confluent_kafka.libs", "librdkafka*.so*"),
        os.path.join(root, "confluent_kafka", ".dylibs", "librdkafka*.dylib"),
    )
    candidates = sorted(path for pattern in patterns for path in glob.glob(pattern))
    if not candidates:
        raise ServiceUnavailableError(
            "the Kafka mock cluster needs the librdkafka bundled with the confluent-kafka wheel, and none "
            f"was found next to {root!r} (a confluent-kafka built against a system librdkafka cannot "
            "start the mock from Python)"
        )
    lib = ctypes.CDLL(candidates[0])
    void_p, char_p, c_int = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_conf_new": (void_p, []),
        "rd_kafka_conf_set": (c_int, [void_p, char_p, char_p, char_p, ctypes.c_size_t]),
        "rd_kafka_new": (void_p, [c_int, void_p, char_p, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [void_p]),
        "rd_kafka_mock_cluster_new": (void_p, [void_p, c_int]),
        "rd_kafka_mock_cluster_destroy": (None, [void_p]),
        "rd_kafka_mock_cluster_bootstraps": (char_p, [void_p]),
        "rd_kafka_mock_topic_create": (c_int, [void_p, char_p, c_int, c_int]),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": (None, [void_p, c_int]),
        "rd_kafka_mock_set_controller_id": (c_int, [void_p, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_down": (c_int, [void_p, ctypes.c_int32]),
        "rd_kafka_mock_broker_set_up": (c_int, [void_p, ctypes.c_int32]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


class MockKafkaCluster:
    """A librdkafka mock cluster with ``num_brokers`` brokers, alive until :meth:`close`.

    Broker ids are 1..``num_brokers``. Topics are created on first use (4 partitions) or explicitly
    with :meth:`create_topic`.
    """

    def __init__(self, num_brokers: int = 3) -> None:
        """Start the cluster; its brokers listen on 127.0.0.1 at once."""
        if num_brokers < 1:
            raise ValueError(f"num_brokers must be >= 1, got {num_brokers}")
        self._lib = _load_librdkafka()
        self._lock = threading.Lock()
        errstr = ctypes.create_string_buffer(_ERRSTR_SIZE)
        conf = self._lib.rd_kafka_conf_new()
        # The owning handle only hosts the cluster; keep its own logging quiet.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"0", errstr, _ERRSTR_SIZE)
        handle = self._lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, _ERRSTR_SIZE)
        if not handle:
            raise ServiceUnavailableError(f"could not create a librdkafka handle: {errstr.value.decode()}")
        cluster = self._lib.rd_kafka_mock_cluster_new(handle, num_brokers)
        if not cluster:
            self._lib.rd_kafka_destroy(handle)
            raise ServiceUnavailableError("librdkafka could not start a mock cluster")
        self._handle: int | None = handle
        self._cluster: int | None = cluster
        self.num_brokers = num_brokers
        # New groups get their first assignment at once instead of after 3 s.
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0)
        # With a controller, admin requests the mock does not implement fail at once as "unsupported"
        # instead of waiting for their timeout.
        self._lib.rd_kafka_mock_set_controller_id(cluster, 1)
        self.bootstrap_servers: str = self._lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()

    def _require_cluster(self) -> int:
        if self._cluster is None:
            raise ServiceUnavailableError("the Kafka mock cluster is closed")
        return self._cluster

    def create_topic(self, name: str, partitions: int, replication_factor: int = 1) -> None:
        """Create topic ``name`` with ``partitions`` partitions (the mock's stand-in for CreateTopics)."""
        with self._lock:
            code = self._lib.rd_kafka_mock_topic_create(
                self._require_cluster(), name.encode(), partitions, replication_factor
            )
        if code != 0:
            raise ServiceUnavailableError(f"the mock cluster refused topic {name!r} (error code {code})")

    def set_broker_down(self, broker_id: int) -> None:
        """Disconnect broker ``broker_id`` and refuse new connections to it until :meth:`set_broker_up`."""
        with self._lock:
            self._lib.rd_kafka_mock_broker_set_down(self._require_cluster(), broker_id)

    def set_broker_up(self, broker_id: int) -> None:
        """Let broker ``broker_id`` accept connections again."""
        with self._lock:
            self._lib.rd_kafka_mock_broker_set_up(self._require_cluster(), broker_id)

    def close(self) -> None:
        """Destroy the cluster, then its owning handle; safe to call twice."""
        with self._lock:
            cluster, self._cluster = self._cluster, None
            handle, self._handle = self._handle, None
            if cluster is not None:
                self._lib.rd_kafka_mock_cluster_destroy(cluster)
            if handle is not None:
                self._lib.rd_kafka_destroy(handle)


@contextmanager
def mock_kafka_cluster(num_brokers: int = 3) -> Iterator[MockKafkaCluster]:
    """Run a :class:`MockKafkaCluster` for the duration of the ``with`` block."""
    cluster = MockKafkaCluster(num_brokers)
    try:
        yield cluster
    finally:
        cluster.close()
