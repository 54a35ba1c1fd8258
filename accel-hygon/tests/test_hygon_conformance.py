"""accel-hygon's records pass core's conformance kit."""

from accel.testing import parametrize_with_checks, records_of


@parametrize_with_checks(records_of("accel-hygon"))
def test_conformance(record, check):
    check(record)
