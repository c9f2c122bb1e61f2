"""Shared test configuration.

The mainspring pytest plugin (fixtures such as ``settings_factory``, ``captured_logs`` and the service
fixtures) is loaded through its ``pytest11`` entry point; listing it in ``pytest_plugins`` here would
load it twice.
"""
