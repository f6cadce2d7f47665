import pytest

from chinook.grpc_client import from_struct, to_struct


def test_a_dict_survives_the_round_trip_through_a_struct():
    values = {"id": 7, "ratio": 1.5, "title": "x", "none": None, "flag": True,
              "nested": {"list": [1, 2.5, {"deep": None}], "empty": []}}
    assert from_struct(to_struct(values)) == values


@pytest.mark.parametrize("number, expected_type", [(3, int), (3.0, int), (3.25, float), (-0.0, int)])
def test_integral_numbers_come_back_as_ints(number, expected_type):
    assert type(from_struct(to_struct({"n": number}))["n"]) is expected_type
