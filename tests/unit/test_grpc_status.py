"""The status a failure is answered with: its code, and a message every client takes."""

import grpc
import kombu.exceptions
import pytest
import redis

from cache_svc.servicer import status_of
from chinook.celery_setup import QueueMissing, QueueTypeMismatch
from chinook.entities import ValidationError
from chinook.grpc_server import MAX_STATUS_MESSAGE, abort


class Aborted(Exception):
    pass


class FakeContext:
    def abort(self, code, message):
        self.code, self.message = code, message
        raise Aborted()


@pytest.mark.parametrize("error, code", [
    (ValidationError("title: must be a string"), grpc.StatusCode.INVALID_ARGUMENT),
    (redis.ConnectionError("Connection refused"), grpc.StatusCode.UNAVAILABLE),
    (kombu.exceptions.OperationalError("[Errno 111] Connection refused"), grpc.StatusCode.UNAVAILABLE),
    (QueueTypeMismatch("RabbitMQ refuses the quorum queue 'duplicate_queue' ...", ["duplicate_queue"]),
     grpc.StatusCode.UNAVAILABLE),
    (QueueMissing("RabbitMQ has no task queue 'write_back_queue' ...", ["write_back_queue"]),
     grpc.StatusCode.UNAVAILABLE),
])
def test_failures_of_the_cache_service_map_to_their_codes(error, code):
    assert status_of(error)[0] == code


def test_a_long_message_is_cut_to_what_a_header_can_carry():
    context = FakeContext()
    with pytest.raises(Aborted):
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, "unknown entity '" + "🎸" * 10_000 + "'")
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert context.message.startswith("unknown entity '🎸") and context.message.endswith("(cut from 10017 characters)")
    # Percent-encoded, each of these characters takes 12 bytes; clients refuse headers beyond 8 KB.
    assert len(context.message) < MAX_STATUS_MESSAGE + 40 and MAX_STATUS_MESSAGE * 12 < 8192


def test_a_short_message_is_left_as_it_is():
    context = FakeContext()
    with pytest.raises(Aborted):
        abort(context, grpc.StatusCode.NOT_FOUND, "album 999999 not found")
    assert context.message == "album 999999 not found"
