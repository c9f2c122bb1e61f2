"""The service runtime: one process's components with one lifecycle.

::

    from mainspring.service import Service

    service = Service(settings)
    db = service.add("database", Database.from_settings(settings.database))
    broker = service.add("broker", create_broker(settings.messaging))
    service.add("outbox-relay", OutboxRelay(db, broker), depends_on=["database", "broker"])
    await service.run()

See ``docs/service.md``.
"""

from mainspring.service._service import Component, ComponentInfo, Service, ServiceStartError

__all__ = ["Component", "ComponentInfo", "Service", "ServiceStartError"]
