"""accel-ascend's records pass core's conformance kit."""

from accel.testing import parametrize_with_checks, records_of


@parametrize_with_checks(records_of("accel-ascend"))
def test_conformance(record, check):
    check(record)
