"""The conformance kit: contract checks that every plugin's own tests run against its records."""

from accel.testing.conformance import CHECKS, checks_for, parametrize_with_checks, records_of

__all__ = ["CHECKS", "checks_for", "parametrize_with_checks", "records_of"]
