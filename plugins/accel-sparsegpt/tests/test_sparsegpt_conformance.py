"""accel's conformance kit, run against the records this distribution registers."""

from accel.testing import parametrize_with_checks, records_of


@parametrize_with_checks(records_of("accel-sparsegpt"))
def test_conformance(record, check):
    check(record)
