"""The two forms of an AckFlushedRequest's rows: messages (rows), as workers sent them
before, and two lists (ids and versions), as they send them now. cache-svc takes either,
so that workers of both versions run side by side through a rolling update."""

import pytest

from cache_svc.servicer import flushed_versions
from chinook.cache.v1 import cache_pb2
from chinook.entities import ValidationError


def test_either_form_gives_the_same_ids_and_versions_in_order():
    pairs = [(7, 1_733_580_000_000_001), (3, 5), (7_000, 2)]
    as_rows = cache_pb2.AckFlushedRequest(entity="album", claim="c",
                                          rows=[cache_pb2.RowVersion(id=i, version=v) for i, v in pairs])
    as_lists = cache_pb2.AckFlushedRequest(entity="album", claim="c", ids=[i for i, _ in pairs],
                                           versions=[v for _, v in pairs])
    # The lists travel as packed fields: fewer bytes than a message per row.
    assert len(as_lists.SerializeToString()) < len(as_rows.SerializeToString())
    expected = ([7, 3, 7_000], [1_733_580_000_000_001, 5, 2])
    assert flushed_versions(as_rows) == flushed_versions(as_lists) == expected
    assert flushed_versions(cache_pb2.AckFlushedRequest(entity="album", claim="c")) == ([], [])


@pytest.mark.parametrize("request_, message", [
    (cache_pb2.AckFlushedRequest(rows=[cache_pb2.RowVersion(id=1, version=2)], ids=[1], versions=[2]),
     "set rows, or ids and versions, not both"),
    (cache_pb2.AckFlushedRequest(ids=[1, 2], versions=[2]), "ids and versions: 2 ids but 1 versions"),
    (cache_pb2.AckFlushedRequest(versions=[2]), "ids and versions: 0 ids but 1 versions"),
])
def test_both_forms_at_once_or_lists_of_unequal_length_are_refused(request_, message):
    with pytest.raises(ValidationError, match=message):
        flushed_versions(request_)
