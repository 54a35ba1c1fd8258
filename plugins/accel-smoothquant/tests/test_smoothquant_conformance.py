"""accel's conformance kit against the records accel-smoothquant registers."""

from accel.testing import parametrize_with_checks, records_of


@parametrize_with_checks(records_of("accel-smoothquant"))
def test_conformance(record, check):
    check(record)
