"""Shared test configuration.

The mainspring pytest plugin (fixtures such as ``settings_factory``, ``captured_logs`` and the service
fixtures) is loaded through its ``pytest11`` entry point; listing it in ``pytest_plugins`` here would
load it twice.
"""

from hypothesis import HealthCheck, settings

# CI machines have 2 shared cores: a property test must fail on a wrong answer, not on a slow example.
settings.register_profile("mainspring", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mainspring")
