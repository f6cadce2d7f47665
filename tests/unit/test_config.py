import pytest

from chinook.config import ConfigError, Settings, listed_addresses, load_settings, redact_url, tls_server_name


def test_defaults_for_a_local_run():
    settings = load_settings({})
    assert settings == Settings()
    assert (settings.gateway_port, settings.cache_grpc_port, settings.persistence_grpc_port) == (5000, 50051, 50052)
    assert (settings.writeback_batch_size, settings.writeback_delay_ms, settings.cache_ttl_s) == (500, 100, 3600)


def test_variables_override_defaults_with_their_types():
    settings = load_settings({"WRITEBACK_BATCH_SIZE": "50", "REDIS_URL": "redis://r:1/2", "GRPC_TIMEOUT_S": "2.5"})
    assert settings.writeback_batch_size == 50
    assert settings.redis_url == "redis://r:1/2"
    assert settings.grpc_timeout_s == 2.5


@pytest.mark.parametrize("env, message", [
    ({"WRITEBACK_BATCH_SIZE": "many"}, "WRITEBACK_BATCH_SIZE='many' is not a valid int"),
    ({"WRITEBACK_BATCH_SIZE": "0"}, "WRITEBACK_BATCH_SIZE='0' must be positive"),
    ({"WRITEBACK_BATCH_SIZE": "10001"}, "WRITEBACK_BATCH_SIZE=10001 must be at most 10000: workers refuse"),
    ({"WRITEBACK_DELAY_MS": "-5"}, "WRITEBACK_DELAY_MS='-5' must be zero or more"),
    ({"BROKER_QUEUE_TYPE": "stream"}, "BROKER_QUEUE_TYPE='stream' must be one of quorum, classic"),
    ({"LOG_FORMAT": "yaml"}, "LOG_FORMAT='yaml' must be one of text, json"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_broker_queue_type_quorum_unless_classic():
    assert load_settings({}).broker_queue_type == "quorum"
    assert load_settings({"BROKER_QUEUE_TYPE": "classic"}).broker_queue_type == "classic"


def test_booleans_and_roles():
    settings = load_settings({"ALLOW_ANONYMOUS": "true", "LEGACY_ROUTES": "no", "ANONYMOUS_ROLE": "reader"})
    assert (settings.allow_anonymous, settings.legacy_routes, settings.anonymous_role) == (True, False, "reader")
    with pytest.raises(ConfigError, match="ALLOW_ANONYMOUS='maybe' must be true or false"):
        load_settings({"ALLOW_ANONYMOUS": "maybe"})
    with pytest.raises(ConfigError, match="ANONYMOUS_ROLE='root' must be one of none, reader, writer, admin"):
        load_settings({"ANONYMOUS_ROLE": "root"})


@pytest.mark.parametrize("url, shown", [
    ("postgresql://chinook:s3cret@db:5432/chinook", "postgresql://chinook:***@db:5432/chinook"),
    ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
    ("rediss://cache-svc:p%40ss@redis:6380/0", "rediss://cache-svc:***@redis:6380/0"),
    ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_urls_are_shown_without_their_password(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize("target, pairs", [
    ("127.0.0.1:50051", []),
    ("dns:///cache-svc:50051", []),
    ("ipv4:127.0.0.1:50051,127.0.0.1:50061", [("127.0.0.1", 50051), ("127.0.0.1", 50061)]),
    ("ipv6:[::1]:50051,[fd00::2]:50051", [("::1", 50051), ("fd00::2", 50051)]),
])
def test_targets_that_list_addresses(target, pairs):
    assert listed_addresses(target) == pairs
    assert load_settings({"CACHE_SVC_ADDR": target}).cache_svc_addr == target


@pytest.mark.parametrize("env, message", [
    ({"CACHE_SVC_ADDR": "127.0.0.1:50051,127.0.0.1:50061"},
     ("CACHE_SVC_ADDR='127.0.0.1:50051,127.0.0.1:50061' lists several addresses without saying which kind: write "
      "them as gRPC's target ipv4:127.0.0.1:50051,127.0.0.1:50061")),
    ({"PERSISTENCE_SVC_ADDR": "a:1,b:1"}, (r"PERSISTENCE_SVC_ADDR='a:1,b:1' .* ipv4:10.0.0.1:50051,10.0.0.2:50051 "
                                           r"\(ipv6:.*addresses, not names\), or give one name")),
    ({"CACHE_SVC_ADDR": "ipv4:127.0.0.1:50051,cache-b:50051"},
     "CACHE_SVC_ADDR='ipv4:127.0.0.1:50051,cache-b:50051': 'cache-b:50051' is not an ipv4 address with a port"),
    ({"CACHE_SVC_ADDR": "ipv4:127.0.0.1"}, "'127.0.0.1' is not an ipv4 address with a port"),
    ({"CACHE_SVC_ADDR": "ipv6:::1:50051"}, r"'::1:50051' is not an ipv6 address with a port, like \[fd00::1\]:50051"),
    ({"CACHE_SVC_ADDR": "ipv4:127.0.0.1:70000"}, "'127.0.0.1:70000': the port must be 1-65535"),
])
def test_bad_targets_name_the_variable_and_the_form(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_a_list_of_addresses_is_checked_against_their_common_host():
    assert tls_server_name("ipv4:127.0.0.1:50051,127.0.0.1:50061") == "127.0.0.1"
    assert tls_server_name("ipv4:10.0.0.1:50051,10.0.0.2:50051") is None
    assert tls_server_name("cache-svc:50051") is None
