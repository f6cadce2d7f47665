"""The scales a run may take (`--scale`): the table sizes B1 runs at, the lengths of the
loads, and the limits every scenario keeps to."""

from dataclasses import dataclass

# The album table of the Chinook data; every size a scenario runs at is a multiple of it.
BASE_ALBUMS = 347


@dataclass(frozen=True)
class Profile:
    name: str
    # Table sizes B1 runs at, in growing order; each step multiplies the table by 2-64.
    b1_sizes: tuple
    # The sizes reported as B1 proper (the others belong to the B5 scaling curve).
    b1_headline: tuple
    # The table size B2 and B3 run at; B4 then duplicates it to twice that.
    load_size: int
    b2_duration_s: float
    b3_duration_s: float
    # The read-mostly mix, per target.
    mix_duration_s: float
    # B6's single updates, per configuration (B1 runs there at load_size).
    b6_duration_s: float
    warmup_s: float
    concurrency: int = 16
    hot_rows: int = 10
    # Rows per POST /albums/bulk (the API takes at most 100,000).
    bulk_chunk: int = 100_000
    durable_timeout_s: float = 600
    # How long to let Postgres backends publish their transaction counts before reading
    # them (they do when idle, at most once a second).
    stats_wait_s: float = 1.2
    # Rounds of the tracing-cost step (tracing off, a tenth, every trace), each setting's
    # CPU per request the mean of its rounds: one round's loads differ by up to 15 %.
    tracing_rounds: int = 3
    # Rounds of B3 with the near cache on, each round its own ratio to the monolith: the
    # 1.3x target holds in each (`make bench` prints the three).
    b3_rounds: int = 3


FULL = Profile("full", b1_sizes=(1_388, 11_104, 88_832, 355_328), b1_headline=(11_104, 88_832),
               load_size=11_104, b2_duration_s=20, b3_duration_s=10, mix_duration_s=10, b6_duration_s=10,
               warmup_s=1.0)
# A few rows and a second of load: `make test` runs it so the code cannot rot.
SMOKE = Profile("smoke", b1_sizes=(BASE_ALBUMS, 2 * BASE_ALBUMS), b1_headline=(BASE_ALBUMS,),
                load_size=BASE_ALBUMS, b2_duration_s=1, b3_duration_s=1, mix_duration_s=1, b6_duration_s=1,
                warmup_s=0.2,
                bulk_chunk=250,
                durable_timeout_s=60, stats_wait_s=0.3, tracing_rounds=1, b3_rounds=2)
# B1 at the B2/B3 size only, and shorter loads: for profiling and quick looks.
QUICK = Profile("quick", b1_sizes=(1_388, 11_104), b1_headline=(11_104,), load_size=11_104,
                b2_duration_s=8, b3_duration_s=8, mix_duration_s=8, b6_duration_s=5, warmup_s=1.0)
PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}
