"""Test helpers for mainspring services and for mainspring itself.

The pytest plugin (:mod:`mainspring.testing.plugin`, loaded automatically) provides the fixtures
``settings_factory``, ``captured_logs`` and the real-service fixtures ``postgres_url``, ``mariadb_url``,
``redis_url``, ``rabbitmq_url`` and ``nats_url``, each yielding a :class:`ServiceURL` to an isolated
namespace. See ``docs/testing.md``.
"""

from mainspring.testing._kafka import MockKafkaCluster, mock_kafka_cluster
from mainspring.testing._logs import capture_logs
from mainspring.testing._services import require_services
from mainspring.testing._settings import SettingsFactory
from mainspring.testing._tls import CertificateAuthority, IssuedCertificate, issue_test_cert, make_test_ca
from mainspring.testing._url import Isolation, ServiceURL

__all__ = [
    "CertificateAuthority",
    "Isolation",
    "IssuedCertificate",
    "MockKafkaCluster",
    "ServiceURL",
    "SettingsFactory",
    "capture_logs",
    "issue_test_cert",
    "make_test_ca",
    "mock_kafka_cluster",
    "require_services",
]
