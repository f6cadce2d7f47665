"""Which private stores `make run` starts (chinook/local_stores/embedded.py): a store whose
default URL does not answer is started; an explicit URL is never replaced, and one that
does not answer is a problem; and the lines that say so."""

from chinook.config import load_settings
from chinook.local_stores.embedded import STORES, missing_binaries_message, plan, started_line

POSTGRES, REDIS, RABBITMQ = STORES


def refusing(*urls: str):
    """A connection check to which exactly `urls` do not answer."""
    return lambda url: "nothing answers" if url in urls else None


DEFAULT = load_settings({})
EVERY_DEFAULT = refusing(DEFAULT.database_url, DEFAULT.redis_url, DEFAULT.celery_result_backend, DEFAULT.broker_url)


def test_with_nothing_answering_at_the_defaults_every_store_is_started():
    assert plan(load_settings({}), EVERY_DEFAULT) == ([POSTGRES, REDIS, RABBITMQ], [])


def test_a_variable_set_to_exactly_its_default_counts_as_the_default():
    settings = load_settings({"DATABASE_URL": DEFAULT.database_url, "BROKER_URL": DEFAULT.broker_url})
    assert plan(settings, EVERY_DEFAULT) == ([POSTGRES, REDIS, RABBITMQ], [])


def test_only_the_stores_that_do_not_answer_are_started():
    assert plan(load_settings({}), refusing(DEFAULT.celery_result_backend)) == ([REDIS], [])
    assert plan(load_settings({}), refusing()) == ([], [])


def test_an_explicit_url_that_does_not_answer_is_a_problem_and_nothing_replaces_it():
    url = "postgresql://postgres@127.0.0.1:5433/chinook"
    needed, problems = plan(load_settings({"DATABASE_URL": url}), refusing(url, DEFAULT.broker_url))
    assert needed == [RABBITMQ]
    assert problems == [("DATABASE_URL: nothing answers; start Postgres, e.g. `pg_ctlcluster 15 main start` "
                         "or set DATABASE_URL")]


def test_an_explicit_url_that_answers_is_used_and_its_store_not_started():
    url = "redis://10.0.0.5:6379/0"
    settings = load_settings({"REDIS_URL": url, "CELERY_RESULT_BACKEND": "redis://10.0.0.5:6379/1"})
    assert plan(settings, refusing(DEFAULT.redis_url, DEFAULT.celery_result_backend)) == ([], [])


def test_a_redis_cluster_at_the_default_url_is_never_replaced_by_a_single_private_redis():
    settings = load_settings({"REDIS_CLUSTER": "true"})
    needed, problems = plan(settings, refusing(DEFAULT.redis_url))
    assert needed == []
    assert [problem.split(":")[0] for problem in problems] == ["REDIS_URL"]


def test_the_line_that_says_what_started():
    assert started_line([POSTGRES, REDIS, RABBITMQ], ".local-stores") == (
        "no stores answered at the default URLs: started private Postgres, Redis and RabbitMQ under "
        ".local-stores/ (their data kept); Ctrl-C stops them")
    assert started_line([POSTGRES, RABBITMQ], ".local-stores") == (
        "Postgres and RabbitMQ did not answer at their default URLs: started private Postgres and RabbitMQ under "
        ".local-stores/ (their data kept); Ctrl-C stops them")
    assert started_line([REDIS], ".local-stores") == (
        "Redis did not answer at its default URL: started a private Redis under .local-stores/ (its data kept); "
        "Ctrl-C stops it")


def test_the_missing_binaries_message_names_only_the_missing_stores_packages():
    message = missing_binaries_message({REDIS: ["redis-server"]}, ".local-stores")
    assert "Redis, and its server binaries are not installed (redis-server not found)" in message
    assert "sudo apt-get install redis-server\n" in message
    assert "brew install redis\n" in message
    assert "docker compose up redis\n" in message
    assert "set REDIS_URL and CELERY_RESULT_BACKEND to reach them" in message

