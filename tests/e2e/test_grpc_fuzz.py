"""Generated messages to every RPC of both gRPC services, against the five real processes:
valid, boundary and garbage values, built by walking each request type's descriptor.

Each answer's status code must be one the RPC's comment in the .proto lists (UNKNOWN and
INTERNAL never are), every process must stay up, and afterwards, once everything is
flushed, Postgres must hold every value the cache accepted and every row ApplyWrites
acknowledged, with no dead letters. GRPC_FUZZ_EXAMPLES (default 40) sets the examples
per RPC, for deeper runs.

The processes run with mutual TLS, each with its own certificate: the fuzzer calls each RPC
as a service that may call it (chinook.callers), and calls every RPC as every service and
as a certificate of none, which must get PERMISSION_DENIED exactly where the table says no.
"""

import json
import math
import os
import re
from dataclasses import dataclass
from functools import cached_property

import grpc
import psycopg2
import pytest
from google.protobuf import descriptor_pb2, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from chinook.cache.v1 import cache_pb2
from chinook.callers import ALLOWED_CALLERS, SERVICE_HOSTS
from chinook.entities import ENTITIES, Entity
from chinook.grpc_client import CACHE_SERVICE, PERSISTENCE_SERVICE, from_struct, make_channel, to_struct
from chinook.persistence.v1 import persistence_pb2
from deploy import dev_certs
from testkit.stack import REPO_ROOT, Stack, own_stack

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("GRPC_FUZZ_EXAMPLES", "40"))
PROTO_ROOT = REPO_ROOT / "protos"
WELL_KNOWN_PROTOS = os.path.join(os.path.dirname(protoc.__file__), "_proto")
SERVICES = [cache_pb2.DESCRIPTOR.services_by_name["CacheService"],
            persistence_pb2.DESCRIPTOR.services_by_name["PersistenceService"]]
STATUS_NAMES = {code.name for code in grpc.StatusCode}
UNARY_DEADLINE_S = 30
# What both ends take, as the services set it.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Few pending rows, so that the fuzzer meets RESOURCE_EXHAUSTED too.
MAX_PENDING = 400
# The cache writes only rows with ids up to this; ApplyWrites (which takes any version it is
# given) only rows above, so that each side's record of what it wrote stays checkable.
CACHE_MAX_ID = 150
# Rows loaded into the cache before fuzzing, clean at the version Postgres has, as in a cache
# in use; no fuzzed write of the cache reaches them.
WARM_ID = CACHE_MAX_ID + 1
CACHE, PERSISTENCE = f"/{CACHE_SERVICE}/", f"/{PERSISTENCE_SERVICE}/"
# The callers: every service, and a certificate of the CA naming none (`make certs`' dev.pem).
NOBODY = "no service"
CALLERS = [*SERVICE_HOSTS, NOBODY]


# The documented status codes


def proto_comments(tmp_path) -> dict[str, str]:
    """The leading comment of every RPC, by method path, as protoc reads the .proto files."""
    out = tmp_path / "descriptors.pb"
    sources = [str(path.relative_to(PROTO_ROOT)) for path in sorted(PROTO_ROOT.rglob("*.proto"))]
    assert protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{WELL_KNOWN_PROTOS}", "--include_source_info",
                        f"--descriptor_set_out={out}", *sources]) == 0
    comments = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        for location in file.source_code_info.location:
            # [6, service, 2, method] is the path of an RPC in its file.
            if len(location.path) == 4 and location.path[0] == 6 and location.path[2] == 2:
                service = file.service[location.path[1]]
                method = service.method[location.path[3]]
                comments[f"/{file.package}.{service.name}/{method.name}"] = location.leading_comments
    return comments


def listed_codes(comment: str, label: str) -> set[grpc.StatusCode]:
    """The codes named as `CODE (why)` after `label:` in a comment, up to the next label."""
    text = " ".join(line.strip() for line in comment.splitlines())
    match = re.search(rf"{label}: (.*?)(?:Errors:|Result codes:|$)", text)
    if not match:
        return set()
    names = re.findall(r"\b([A-Z][A-Z_]+) \(", match.group(1))
    unknown = set(names) - STATUS_NAMES
    assert not unknown, f"{label} lists {unknown}, which are not gRPC status codes"
    return {grpc.StatusCode[name] for name in names}


@dataclass(frozen=True)
class Rpc:
    service: object  # ServiceDescriptor
    method: object  # MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def on_cache(self) -> bool:
        return self.service.full_name == CACHE_SERVICE

    @cached_property
    def request_class(self):
        return message_factory.GetMessageClass(self.method.input_type)

    @cached_property
    def response_class(self):
        return message_factory.GetMessageClass(self.method.output_type)


RPCS = [Rpc(service, method) for service in SERVICES for method in service.methods]
RPCS_BY_PATH = {rpc.path: rpc for rpc in RPCS}


# Strategies built from the message descriptors


INT32, INT64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
BOUNDARY_INTS = (0, -1, 1, 2**31 - 1, 2**31, -(2**31), 2**63 - 1, -(2**63))
# Around 2^53, where Redis' Lua numbers (doubles) stop counting versions exactly.
BOUNDARY_VERSIONS = (*BOUNDARY_INTS, 2**52, 2**53 - 2**32, 2**53 - 2**32 + 1, 2**53, 2**53 + 1)
BOUNDARY_FLOATS = (0.0, -0.0, -1.0, 0.05, 1.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324)
UNICODE = st.characters(codec="utf-8")
# Just beyond the columns' limits (120, 160 characters), and far beyond.
LONG_TEXTS = st.builds(str.__mul__, st.sampled_from(["x", "ü", "🎸"]), st.sampled_from([121, 161, 10_000]))
TEXTS = st.one_of(
    st.text(UNICODE, max_size=20), LONG_TEXTS,
    st.sampled_from(["", " ", "\x00", "album\x00", "\u202eRTL", "' OR 1=1 --"]),
)
# Wrong types, nulls, values beyond Postgres' int range and over-long strings.
GARBAGE_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**31, -(2**31) - 1, 2**63, 1.5, math.nan, math.inf, -math.inf,
                     "", "a\x00b", "1", [], {}, ["x"], {"title": "x"}]),
    st.floats(), st.text(UNICODE, max_size=5), LONG_TEXTS,
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
NOT_JSON = st.one_of(
    st.text(UNICODE, max_size=20),
    st.sampled_from(["", "{", "[", "{'title': 'x'}", '{"title": ', "nul", "\ufeff{}", "1e999999",
                     "[" * 100_000, "[" * 50_000 + "]" * 50_000, '{"a":' * 50_000]),
)
GARBAGE_ENTITIES = st.one_of(st.sampled_from(["", "track", "Album", "album ", "albums", "ALBUM"]),
                             st.text(UNICODE, max_size=10), LONG_TEXTS)
# 3000 different characters: too long to index, even compressed.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CJK_TEXT = "".join(map(chr, range(0x4E00, 0x4E00 + 3000)))
# Few distinct ids, since an operation runs once per id: the tables grow a bounded number of times.
OPERATION_IDS = st.sampled_from(["fuzz-1", "fuzz-1", "fuzz-2", "", "é" * 201, CJK_TEXT])


def repeated(element, large=None):
    """Empty, small or large lists; large ones repeat a few elements, cheap to generate."""
    many = st.builds(lambda items, n: (items * n)[:n], st.lists(element, min_size=1, max_size=3),
                     st.sampled_from([100, 1000]))
    return st.one_of(st.just([]), st.lists(element, min_size=1, max_size=4), many,
                     *([large] if large is not None else []))


def valid_values(column, artist_ids) -> st.SearchStrategy:
    """Values Postgres takes for the column."""
    if column.pg_type == "int":
        return st.sampled_from(artist_ids) if column.references == "artist" else st.integers(*INT32)
    valid = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=column.max_length)
    return valid | st.none() if column.nullable else valid


class Strategies:
    """Requests for one service: ids from `ids`, references to rows of `artist_ids`."""

    def __init__(self, ids: list[int], artist_ids: list[int], task_ids: list[str], multipliers: list[int]):
        self.ids = st.one_of(st.sampled_from(ids), st.sampled_from(ids), st.sampled_from(ids),
                             st.sampled_from([v for v in BOUNDARY_INTS if v != 1] + [999_999]))
        self.all_ids = ids
        self.artist_ids = artist_ids
        self.task_ids = task_ids
        self.multipliers = multipliers

    def request(self, rpc: Rpc) -> st.SearchStrategy:
        return self.message(rpc.method.input_type)

    def message(self, descriptor, entity: Entity | None = None) -> st.SearchStrategy:
        """The entity a message names steers the shape of its other fields, mostly."""
        if "entity" not in descriptor.fields_by_name:
            return self._message(descriptor, entity or ENTITIES["album"], {})
        valid = st.sampled_from(sorted(ENTITIES))
        same = valid.map(lambda name: (name, name))
        named = st.one_of(same, same, same, st.tuples(valid, valid), st.tuples(GARBAGE_ENTITIES, valid))
        return named.flatmap(lambda pair: self._message(descriptor, ENTITIES[pair[1]], {"entity": pair[0]}))

    def _message(self, descriptor, entity: Entity, fixed: dict) -> st.SearchStrategy:
        """Mostly every field set, but one form of what comes in two (`rows` and `rows_json`);
        sometimes both, or only some fields, the others left at their defaults."""
        cls = message_factory.GetMessageClass(descriptor)
        fields = {f.name: self.field(f, entity) for f in descriptor.fields if f.name not in fixed}
        fixed = {name: st.just(value) for name, value in fixed.items()}
        forms = [(name, f"{name}_json") for name in fields if f"{name}_json" in fields]
        one_form = st.tuples(*(st.sampled_from(pair) for pair in forms)).flatmap(lambda left_out: st.fixed_dictionaries(
            {**fixed, **{name: values for name, values in fields.items() if name not in left_out}}))
        every = st.fixed_dictionaries({**fixed, **fields})
        some = st.fixed_dictionaries(fixed, optional=fields)
        return st.one_of(one_form, one_form, one_form, every, some).map(lambda values: cls(**values))

    def field(self, field, entity: Entity) -> st.SearchStrategy:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            # A string map (trace context): well-formed headers, broken ones, any text.
            return st.dictionaries(st.one_of(st.sampled_from(["traceparent", "tracestate"]), TEXTS),
                                   st.one_of(st.just(TRACEPARENT), TEXTS), max_size=3)
        element = self.scalar_or_message(field, entity)
        if field.is_repeated:
            return repeated(element, st.just(self.all_ids) if field.name == "ids" else None)
        return element

    def scalar_or_message(self, field, entity: Entity) -> st.SearchStrategy:
        kind = field.type
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Struct":
                return self.patches(entity).map(to_struct)
            return self.message(field.message_type, entity)
        if field.name in ("id", "ids"):
            return self.ids
        if field.name == "version":
            return st.one_of(st.sampled_from(BOUNDARY_VERSIONS), st.integers(0, 2**53))
        if field.name == "multiplier":
            return st.sampled_from(self.multipliers)
        if field.name == "operation_id":
            return OPERATION_IDS
        if field.name == "task_id":
            return st.one_of(TEXTS, *([st.sampled_from(self.task_ids)] if self.task_ids else []))
        if field.name.endswith("_json") and kind == field.TYPE_STRING:
            return st.one_of(self.json_of_shape(field.name, entity), ANY_JSON.map(json.dumps), NOT_JSON)
        if kind == field.TYPE_BOOL:
            return st.booleans()
        if kind in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            return st.one_of(st.sampled_from(BOUNDARY_FLOATS), st.floats(allow_nan=True))
        if kind == field.TYPE_STRING:
            return TEXTS
        if kind in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32, field.TYPE_INT64, field.TYPE_SINT64,
                    field.TYPE_SFIXED64):
            low, high = INT32 if kind in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32) else INT64
            return st.one_of(st.sampled_from([v for v in BOUNDARY_INTS if low <= v <= high]),
                             st.integers(-3, 1005), st.integers(low, high))
        raise AssertionError(f"no strategy for field {field.full_name} of type {kind}")

    def patches(self, entity: Entity) -> st.SearchStrategy:
        """Columns to write: valid values, or any values and sometimes fields that are no columns."""
        valid = st.fixed_dictionaries({}, optional={c.name: valid_values(c, self.artist_ids)
                                                    for c in entity.columns}).filter(bool)
        any_values = st.fixed_dictionaries({}, optional={c.name: valid_values(c, self.artist_ids) | GARBAGE_VALUES
                                                         for c in entity.columns})
        unknown = st.dictionaries(st.one_of(st.sampled_from(["year", "_ver", "_dirty", entity.primary_key, ""]),
                                            st.text(max_size=8), LONG_TEXTS), GARBAGE_VALUES, min_size=1, max_size=2)
        return st.one_of(valid, valid, any_values, st.tuples(any_values, unknown).map(lambda p: {**p[1], **p[0]}))

    def json_of_shape(self, name: str, entity: Entity) -> st.SearchStrategy:
        """JSON of the shape the field documents, with valid or garbage values in it."""
        if name == "fields_json":
            return self.patches(entity).map(json.dumps)
        ids = st.one_of(self.ids, self.ids, GARBAGE_VALUES)
        if name == "updates_json":
            item = st.tuples(ids, self.patches(entity)).map(lambda p: {entity.primary_key: p[0], **p[1]})
            return repeated(item).map(json.dumps)
        if name == "rows_json":
            versions = st.one_of(st.sampled_from(BOUNDARY_VERSIONS), st.integers(0, 2**53), GARBAGE_VALUES)
            rows = repeated(st.tuples(ids, versions, self.patches(entity)))
            return st.tuples(rows, st.sampled_from([None, "drop id", "short version", "unset not lists",
                                                    "unset unhashable", "unset unknown"])).map(
                lambda args: columnar_json(entity, *args))
        raise AssertionError(f"no JSON shape known for {name}")


def columnar_json(entity: Entity, rows: list, damage: str | None) -> str:
    """rows_json's form: one array per column, "unset" naming each row's absent columns;
    `damage` breaks the shape in one way."""
    columns = {"id": [r[0] for r in rows], "version": [r[1] for r in rows]}
    for name in entity.column_names:
        columns[name] = [r[2].get(name) for r in rows]
    unset = [[name for name in entity.column_names if name not in r[2]] for r in rows]
    if any(unset):
        columns["unset"] = unset
    if damage == "drop id":
        del columns["id"]
    elif damage == "short version":
        columns["version"] = columns["version"][1:]
    elif damage == "unset not lists":
        columns["unset"] = ["title"] * len(rows)
    elif damage == "unset unhashable":
        columns["unset"] = [[["title"]]] * len(rows)
    elif damage == "unset unknown":
        columns["unset"] = [["_ver"]] * len(rows)
    return json.dumps(columns)


# The run: the processes, the calls, and what they accepted


@dataclass
class Applied:
    version: int
    fields: dict


class Fuzzer:
    """Sends requests and records what the services accepted."""

    def __init__(self, stack: Stack, album_ids: list[int], artist_ids: list[int],
                 nobody: grpc.ChannelCredentials):
        self.stack = stack
        self.album_ids = album_ids
        self.artist_ids = artist_ids
        # A channel to each service as each caller, as the services' own clients make them.
        addresses = {CACHE_SERVICE: stack.cache_addr, PERSISTENCE_SERVICE: stack.persistence_addr}
        self.channels = {(service, identity): stack.channel(address, identity)
                         for service, address in addresses.items() for identity in SERVICE_HOSTS}
        self.channels.update({(service, NOBODY): make_channel(address, [], nobody)
                              for service, address in addresses.items()})
        # The last value the cache accepted of each column of each row it was sent.
        self.accepted: dict[tuple[str, int], dict] = {}
        # The newest write ApplyWrites acknowledged of each row.
        self.applied: dict[tuple[str, int], Applied] = {}
        self.task_ids: list[str] = []

    def close(self):
        for channel in self.channels.values():
            channel.close()

    def strategies(self, rpc: Rpc) -> Strategies:
        ids = list(range(1, CACHE_MAX_ID + 1))
        if rpc.on_cache:
            # A valid multiplier comes only from an explicit example: each doubles the albums.
            return Strategies(ids, self.artist_ids, self.task_ids, [-(2**31), -1, 0, 1, 65, 2**31 - 1])
        if rpc.name == "ApplyWrites":
            ids = [i for i in self.album_ids + self.artist_ids if i > CACHE_MAX_ID]
        else:
            ids = self.album_ids
        return Strategies(ids, self.artist_ids, [], [2, 2, 2, -(2**31), -1, 0, 1, 2**31 - 1])

    def stub(self, rpc: Rpc, caller: str | None = None):
        """The callable that sends a request to the RPC as caller; by default as a service
        that may call it."""
        channel = self.channels[(rpc.service.full_name, caller or min(ALLOWED_CALLERS[rpc.path]))]
        kind = channel.unary_stream if rpc.method.server_streaming else channel.unary_unary
        return kind(rpc.path, request_serializer=rpc.request_class.SerializeToString,
                    response_deserializer=rpc.response_class.FromString)

    def send(self, rpc: Rpc, documented: dict, request, reads: int | None = None):
        """Sends a generated request and checks the answer, as check() does."""
        assume(request.ByteSize() < MAX_MESSAGE_BYTES)  # the client would not send it
        self.check(rpc, documented, request, reads)

    def check(self, rpc: Rpc, documented: dict, request, reads: int | None = None, caller: str | None = None):
        """Sends the request (as caller, by default one that may) and checks the answer. A
        stream is read to its end, or `reads` messages of it before the call is cancelled."""
        call = self.stub(rpc, caller)
        responses, code, details = [], grpc.StatusCode.OK, ""
        cancelled = False
        try:
            if not rpc.method.server_streaming:
                deadline = 5 if rpc.name == "Flush" else UNARY_DEADLINE_S
                responses.append(call(request, timeout=deadline))
            else:
                # The change stream never ends by itself: read to the end, it ends at its deadline.
                endless = rpc.name == "WatchChanges"
                stream = call(request, timeout=1 if endless else UNARY_DEADLINE_S * 2)
                for response in stream:
                    responses.append(response)
                    if reads is not None and len(responses) >= reads:
                        stream.cancel()
                        cancelled = True
                        break
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
        self.check_processes()
        # UNAVAILABLE means a store is down, and none is here.
        allowed = documented[rpc.path]["errors"] - {grpc.StatusCode.UNAVAILABLE} | {grpc.StatusCode.OK}
        if cancelled:
            allowed.add(grpc.StatusCode.CANCELLED)
        if rpc.name == "WatchChanges" and reads is None:
            allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)
        assert code in allowed, f"{rpc.path} answered {code.name} ({details}), not one of its documented codes"
        if rpc.name == "WatchChanges" and responses:
            assert responses[0].subscribed, responses[0]
        for response in responses:
            for result in getattr(response, "results", []):
                result_code = grpc.StatusCode.OK if result.code == 0 else \
                    next((c for c in grpc.StatusCode if c.value[0] == result.code), result.code)
                assert result_code in documented[rpc.path]["results"] | {grpc.StatusCode.OK}, \
                    f"{rpc.path}: result {result.id} has code {result_code} ({result.message})"
        if code == grpc.StatusCode.OK and not rpc.method.server_streaming:
            self.record(rpc, request, responses[0])

    def call(self, path: str, request, timeout: float = UNARY_DEADLINE_S):
        """A unary call, which must succeed."""
        return self.stub(RPCS_BY_PATH[path])(request, timeout=timeout)

    def check_processes(self):
        for name, process in self.stack.processes.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}:\n{self.stack.logs(name)}"

    def record(self, rpc: Rpc, request, response):
        """Keeps what an accepted request wrote, to check against Postgres later."""
        if rpc.on_cache and rpc.name == "UpdateRow":
            self.record_accepted(request.entity, [(request.update.id, from_struct(request.update.fields))])
        elif rpc.on_cache and rpc.name == "UpdateRows":
            for patch, result in zip(request.patches, response.results, strict=False):
                if result.code == 0:
                    self.record_accepted(patch.entity, [(patch.id, json.loads(patch.fields_json))])
        elif rpc.on_cache and rpc.name == "BulkUpdate":
            if request.updates_json:
                primary_key = ENTITIES[request.entity].primary_key
                items = json.loads(request.updates_json)
                self.record_accepted(request.entity, [(item.pop(primary_key), item) for item in items])
            else:
                self.record_accepted(request.entity, [(u.id, from_struct(u.fields)) for u in request.updates])
        elif rpc.on_cache and rpc.name == "RandomizeAlbumTitles":
            # Titles nobody knows now: no longer checked.
            for (entity, _), columns in self.accepted.items():
                if entity == "album":
                    columns.pop("title", None)
        elif rpc.on_cache and rpc.name == "StartDuplication":
            self.task_ids.append(response.task_id)
        elif rpc.on_cache and rpc.name == "AckFlushed":
            assert response.cleaned == 0, f"AckFlushed cleaned {response.cleaned} rows under a claim it guessed: {request}"
        elif rpc.on_cache and rpc.name == "DeadLetter":
            assert response.dead_lettered == 0, \
                f"DeadLetter took {response.dead_lettered} rows at versions no flush was writing: {request}"
        elif rpc.on_cache and rpc.name in ("RetryDeadLetter", "DiscardDeadLetter"):
            raise AssertionError(f"{rpc.name} found a dead letter, which no accepted write should cause: {response}")
        elif not rpc.on_cache and rpc.name == "ApplyWrites":
            self._applied(request, response)

    def record_accepted(self, entity: str, updates: list):
        """(id, columns) updates the cache accepted, in order."""
        for row_id, columns in updates:
            self.accepted.setdefault((entity, int(row_id)), {}).update(columns)

    def _applied(self, request, response):
        if request.rows_json:
            columns = json.loads(request.rows_json)
            names = ENTITIES[request.entity].column_names
            rows = [(row_id, version, {n: v for n, v in zip(names, values, strict=False) if n not in unset})
                    for row_id, version, values, unset in zip(
                        columns["id"], columns["version"], zip(*(columns[n] for n in names), strict=False),
                        columns.get("unset") or [[]] * len(columns["id"]), strict=False)]
        else:
            rows = [(row.id, row.version, from_struct(row.fields)) for row in request.rows]
        newest = {}
        for row_id, version, fields in rows:
            row_id = int(row_id)
            if row_id not in newest or version > newest[row_id].version:
                newest[row_id] = Applied(version, fields)
        for row_id in response.applied_ids:
            key = (request.entity, row_id)
            previous = self.applied.get(key)
            assert previous is None or newest[row_id].version > previous.version, \
                f"ApplyWrites wrote {key} at version {newest[row_id].version} over {previous.version}"
            self.applied[key] = newest[row_id]

    def refused(self, rpc: Rpc, request, caller: str) -> grpc.RpcError:
        """Sends the request as a caller the table does not allow; the refusal."""
        call = self.stub(rpc, caller)
        with pytest.raises(grpc.RpcError) as refusal:
            if rpc.method.server_streaming:
                next(iter(call(request, timeout=UNARY_DEADLINE_S)))
            else:
                call(request, timeout=UNARY_DEADLINE_S)
        self.check_processes()
        return refusal.value

    def health(self, service: str, caller: str = NOBODY) -> int:
        """Health is open to every certificate of the CA."""
        stub = health_pb2_grpc.HealthStub(self.channels[(service, caller)])
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    comments = proto_comments(tmp_path_factory.mktemp("protos"))
    return {path: {"errors": listed_codes(comment, "Errors"), "results": listed_codes(comment, "Result codes")}
            for path, comment in comments.items()}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-certs")
    dev_certs.make_certs(folder)
    return folder


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory, certs):
    """A stack of its own: the fuzzer's writes must not meet other tests' data."""
    with own_stack("fuzz", tmp_path_factory.mktemp("fuzz-stack"),
                   {"WRITEBACK_MAX_ATTEMPTS": "3", "WRITEBACK_RETRY_BACKOFF_MS": "50",
                    "WRITEBACK_MAX_PENDING": str(MAX_PENDING), "GRPC_TLS_DIR": str(certs)}) as stack:
        yield stack


def pg(stack: Stack, query: str) -> list[tuple]:
    with psycopg2.connect(stack.isolation.database_url) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


@pytest.fixture(scope="module")
def fuzzer(fuzz_stack, certs):
    album_ids = [r[0] for r in pg(fuzz_stack, "SELECT album_id FROM album ORDER BY 1")]
    artist_ids = [r[0] for r in pg(fuzz_stack, "SELECT artist_id FROM artist ORDER BY 1")]
    nobody = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(), (certs / "dev-key.pem").read_bytes(),
                                          (certs / "dev.pem").read_bytes())
    fuzzer = Fuzzer(fuzz_stack, album_ids, artist_ids, nobody)
    fuzzer.call(CACHE + "GetRows", cache_pb2.GetRowsRequest(keys=[
        cache_pb2.RowKey(entity=name, id=WARM_ID) for name in ENTITIES]))
    yield fuzzer
    fuzzer.close()


# Requests that once broke a service, each run every time, and the one valid duplication.
EXPLICIT = {
    # A status message quoting a long input was beyond what a client takes in a header.
    CACHE + "GetRow": [cache_pb2.GetRowRequest(entity="🎸" * 10_000, id=1)],
    CACHE + "InspectRow": [cache_pb2.RowKey(entity="🎸" * 10_000, id=1), cache_pb2.RowKey(entity="album", id=WARM_ID)],
    # JSON nested deeper than Python's parser recurses went unhandled (UNKNOWN).
    CACHE + "UpdateRows": [cache_pb2.UpdateRowsRequest(patches=[
        cache_pb2.RowPatch(entity="album", id=1, fields_json="[" * 100_000)])],
    CACHE + "BulkUpdate": [cache_pb2.BulkUpdateRequest(entity="album", updates_json="[" * 100_000)],
    # A well-formed claim id that no flush handed out, for a row the cache holds.
    CACHE + "AckFlushed": [cache_pb2.AckFlushedRequest(
        entity="artist", rows=[cache_pb2.RowVersion(id=WARM_ID, version=0)], claim="0" * 32)],
    # A clean row (nothing pending) at the given version was dead-lettered.
    CACHE + "DeadLetter": [cache_pb2.DeadLetterRequest(
        entity="artist", rows=[cache_pb2.FailedWrite(id=WARM_ID, version=0, error="refused")])],
    CACHE + "StartDuplication": [cache_pb2.StartDuplicationRequest(multiplier=2)],
    PERSISTENCE + "ApplyWrites": [
        persistence_pb2.ApplyWritesRequest(entity="album", rows_json="[" * 100_000),
        # Column names that are lists in "unset" broke the check of them (UNKNOWN).
        persistence_pb2.ApplyWritesRequest(entity="album", rows_json=json.dumps(
            {"id": [200], "version": [1], "title": ["t"], "artist_id": [1], "unset": [[["title"]]]})),
        # Versions beyond what the cache's Lua scripts count exactly were written; the cache
        # then gave the row a version Postgres refused (2^63 - 1 + 1 overflows) or an older one.
        persistence_pb2.ApplyWritesRequest(entity="album", rows=[
            persistence_pb2.Row(id=201, version=2**63 - 1, fields=to_struct({"title": "far ahead"}))]),
        persistence_pb2.ApplyWritesRequest(entity="artist", rows=[
            persistence_pb2.Row(id=202, version=2**53 + 1, fields=to_struct({"name": "far ahead"}))]),
    ],
    # An operation id too long for Postgres' index failed after the copy, as UNAVAILABLE.
    PERSISTENCE + "DuplicateRows": [
        persistence_pb2.DuplicateRowsRequest(entity="artist", multiplier=2, operation_id=CJK_TEXT)],
}


def test_every_rpc_is_documented(documented):
    for rpc in RPCS:
        assert rpc.path in documented, f"{rpc.path} has no comment in its .proto"
        codes = documented[rpc.path]["errors"]
        assert codes, f"{rpc.path}: its comment lists no codes after 'Errors:'"
        assert not codes & {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}, rpc.path


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.path.rsplit(".", 1)[1])
def test_rpc_answers_only_documented_codes(fuzzer, documented, rpc):
    reads = st.one_of(st.none(), st.integers(1, 3)) if rpc.method.server_streaming else st.none()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(request=fuzzer.strategies(rpc).request(rpc), reads=reads)
    def send(request, reads):
        fuzzer.send(rpc, documented, request, reads)

    for request in EXPLICIT.get(rpc.path, []):
        send = example(request=request, reads=None)(send)
    send()


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.path.rsplit(".", 1)[1])
def test_every_caller_is_refused_exactly_where_the_table_says(fuzzer, documented, rpc):
    """As every service and as a certificate of none: a caller the table allows gets one of
    the RPC's documented codes (PERMISSION_DENIED is none of them), any other gets
    PERMISSION_DENIED, for an empty request and for the ones that once broke a service."""
    assert grpc.StatusCode.PERMISSION_DENIED not in documented[rpc.path]["errors"]
    requests = [rpc.request_class(), *EXPLICIT.get(rpc.path, [])]
    for caller in CALLERS:
        if caller in ALLOWED_CALLERS[rpc.path]:
            # The empty request only: the explicit ones run once, in the fuzzing above.
            fuzzer.check(rpc, documented, requests[0], reads=1, caller=caller)
            continue
        for request in requests:
            refusal = fuzzer.refused(rpc, request, caller)
            assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED, (caller, refusal.code(), refusal.details())
            assert rpc.path in refusal.details(), refusal.details()


def test_flush_waits_no_longer_than_its_caller(fuzzer, fuzz_stack):
    """A Flush whose caller gave up frees its thread: otherwise enough of them, while rows
    cannot be flushed, would leave cache-svc no thread to answer anything."""
    for wait_s in (math.nan, math.inf):
        with pytest.raises(grpc.RpcError) as refused:
            fuzzer.call(CACHE + "Flush", cache_pb2.FlushRequest(wait_seconds=wait_s))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    fuzz_stack.stop("write-back-worker")
    try:
        fuzzer.call(CACHE + "UpdateRow", cache_pb2.UpdateRowRequest(
            entity="album", update=cache_pb2.RowUpdate(id=1, fields=to_struct({"title": "Stays pending"}))))
        fuzzer.record_accepted("album", [(1, {"title": "Stays pending"})])
        flush = fuzzer.stub(RPCS_BY_PATH[CACHE + "Flush"])
        # More calls than cache-svc has threads (16 for unary calls, 32 for change streams).
        calls = [flush.future(cache_pb2.FlushRequest(wait_seconds=300), timeout=1) for _ in range(60)]
        for call in calls:
            assert call.exception().code() == grpc.StatusCode.DEADLINE_EXCEEDED
        status = fuzzer.call(CACHE + "GetWriteBackStatus", cache_pb2.GetWriteBackStatusRequest(), timeout=10)
        assert status.pending >= 1
    finally:
        fuzz_stack.start("write-back-worker")


def stored_rows(stack: Stack) -> dict:
    """(entity, id) -> (column values, version) of every row Postgres holds."""
    stored = {}
    for entity in ENTITIES.values():
        rows = pg(stack, f"SELECT {entity.primary_key}, {', '.join(entity.column_names)}, wb_version "
                         f"FROM {entity.table}")
        stored.update({(entity.name, r[0]): (dict(zip(entity.column_names, r[1:-1], strict=False)), r[-1])
                       for r in rows})
    return stored


def flush_all(fuzzer: Fuzzer):
    status = fuzzer.call(CACHE + "Flush", cache_pb2.FlushRequest(wait_seconds=30), timeout=40)
    assert status.pending == 0 and status.failed == 0, status
    dead_letters = fuzzer.call(CACHE + "ListDeadLetters", cache_pb2.ListDeadLettersRequest())
    assert dead_letters.total == 0, dead_letters


def test_after_fuzzing_all_is_up_and_postgres_holds_what_was_accepted(fuzzer, fuzz_stack):
    fuzzer.check_processes()
    for service in (CACHE_SERVICE, PERSISTENCE_SERVICE):
        assert fuzzer.health(service) == health_pb2.HealthCheckResponse.SERVING, service
    flush_all(fuzzer)
    stored = stored_rows(fuzz_stack)
    for key, applied in fuzzer.applied.items():
        values, version = stored[key]
        assert version >= applied.version, f"{key}: Postgres went back to version {version} from {applied.version}"
        if version == applied.version:
            assert {name: values[name] for name in applied.fields} == applied.fields, \
                f"{key}: Postgres holds {values} at version {version}, ApplyWrites acknowledged {applied.fields}"

    # Whatever version ApplyWrites gave a row, the cache can still write it.
    for name, entity in ENTITIES.items():
        ids = sorted(row_id for entity_name, row_id in fuzzer.applied if entity_name == name)
        column = entity.columns[0].name
        updates = [{entity.primary_key: row_id, column: f"after fuzzing {row_id}"} for row_id in ids]
        fuzzer.call(CACHE + "BulkUpdate", cache_pb2.BulkUpdateRequest(entity=name, updates_json=json.dumps(updates)))
        fuzzer.record_accepted(name, [(u.pop(entity.primary_key), u) for u in updates])
    flush_all(fuzzer)

    stored = stored_rows(fuzz_stack)
    for key, columns in fuzzer.accepted.items():
        assert {name: stored[key][0][name] for name in columns} == columns, \
            f"{key}: Postgres holds {stored[key][0]}, the cache accepted {columns} last"
    # Every row the cache holds clean is what Postgres holds at that version (or Postgres has
    # a newer one, which only a direct ApplyWrites can have written).
    keys = [cache_pb2.RowKey(entity="album", id=i) for i in fuzzer.album_ids] + \
        [cache_pb2.RowKey(entity="artist", id=i) for i in fuzzer.artist_ids]
    results = fuzzer.call(CACHE + "GetRows", cache_pb2.GetRowsRequest(keys=keys)).results
    for key, result in zip(keys, results, strict=False):
        assert result.code == 0 and result.write_back == cache_pb2.WRITE_BACK_STATE_CLEAN, (key, result)
        values, version = stored[(key.entity, key.id)]
        assert version >= result.version, \
            f"{key.entity} {key.id}: cached clean at {result.version}, Postgres at {version}"
        if version == result.version:
            cached = json.loads(result.row_json)
            cached.pop(ENTITIES[key.entity].primary_key)
            assert cached == values, f"{key.entity} {key.id} at version {version}: cache {cached}, Postgres {values}"
