"""The shipped traces: counts, lengths and timestamps against independent readings of the
files (csv / json straight from the package data), the Mooncake key rule, loader
options and errors, and the published reference numbers that go with them."""

import csv
import gzip
import io
import json
import math
import time
from importlib import resources

import numpy as np
import pytest

from paged_kv.sim import Workload, arrival_times, list_traces, load_trace, published, traces

NAMES = ["sharegpt", "azure-conv", "azure-code", "mooncake-conversation", "mooncake-synthetic"]
ROWS = {
    "sharegpt": 30_731,  # 30,732 lines: a header line, then one row per conversation
    "azure-conv": 19_366,
    "azure-code": 8_819,
    "mooncake-conversation": 12_031,
    "mooncake-synthetic": 3_993,
}


def _load(name: str, **kwargs) -> Workload:
    if name == "sharegpt":
        kwargs.setdefault("rate", 1.0)
    return load_trace(name, **kwargs)


def _raw_lines(filename: str) -> list[str]:
    """The file's text lines, read without the loaders (an independent reference)."""
    data = resources.files("paged_kv.data").joinpath(filename).read_bytes()
    return gzip.decompress(data).decode().splitlines()


def _raw_csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO("\n".join(_raw_lines(traces.TRACES[name].filename)))))


def _raw_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in _raw_lines(traces.TRACES[name].filename)]


# --- catalogue and package data ---------------------------------------------------


def test_list_traces_names_and_one_line_descriptions():
    listing = list_traces()
    assert list(listing) == NAMES
    for description in listing.values():
        assert description and "\n" not in description


def test_package_data_holds_every_trace_and_the_readme():
    data = resources.files("paged_kv.data")
    for info in traces.TRACES.values():
        assert data.joinpath(info.filename).is_file()
    readme = data.joinpath("README.md").read_text()
    assert "licence" in readme and "Mooncake" in readme


# --- counts and order -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_row_counts(name):
    w = _load(name)
    assert len(w) == ROWS[name] == traces.TRACES[name].num_rows
    assert [r.request_id for r in w] == list(range(ROWS[name]))
    assert w.name == name


def test_sharegpt_row_count_excludes_the_header():
    lines = _raw_lines(traces.TRACES["sharegpt"].filename)
    assert lines[0] == "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio"
    assert len(lines) - 1 == ROWS["sharegpt"]


@pytest.mark.parametrize("name", ["sharegpt", "azure-conv", "azure-code"])
def test_csv_lengths_in_file_order(name):
    prompt_col, output_col = (("num_prefill_tokens", "num_decode_tokens") if name == "sharegpt"
                              else ("ContextTokens", "GeneratedTokens"))
    rows = _raw_csv(name)
    w = _load(name)
    assert [r.prompt_len for r in w] == [int(row[prompt_col]) for row in rows]
    assert [r.output_len for r in w] == [int(row[output_col]) for row in rows]


@pytest.mark.parametrize("name", ["mooncake-conversation", "mooncake-synthetic"])
def test_mooncake_rows_in_file_order(name):
    rows = _raw_jsonl(name)
    w = _load(name)
    assert [(r.prompt_len, r.output_len, r.block_keys) for r in w] == [
        (row["input_length"], row["output_length"], tuple(row["hash_ids"])) for row in rows
    ]
    assert [r.arrival_time for r in w] == [row["timestamp"] / 1000 for row in rows]


# --- timestamps -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_timestamps_are_monotone(name):
    times = _load(name).to_dataframe()["arrival_time"].to_numpy()
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= 0


def test_azure_timestamps_in_seconds_from_the_first_row():
    conv, code = load_trace("azure-conv"), load_trace("azure-code")
    # conv rows 0 and 1: 18:15:46.6805900 and 18:15:50.9951690 -> 4.314579 s apart.
    assert conv[0].arrival_time == 0.0
    assert conv[1].arrival_time == pytest.approx(4.314579, abs=1e-9)
    # last rows: 19:14:08.402527 - 18:15:46.680590 and 19:14:19.928016 - 18:17:03.979960
    assert conv[-1].arrival_time == pytest.approx(58 * 60 + 21.721937, abs=1e-6)
    assert code[-1].arrival_time == pytest.approx(57 * 60 + 15.948056, abs=1e-6)
    assert conv.metadata["time_zero"] == "2023-11-16 18:15:46.6805900"


def test_mooncake_timestamps_are_milliseconds():
    w = load_trace("mooncake-conversation")
    assert w[0].arrival_time == 0.0
    assert w[-1].arrival_time == pytest.approx(3536.999)  # 3,536,999 ms in the file


# --- lengths ----------------------------------------------------------------------


def test_sharegpt_mean_lengths_of_the_shipped_file():
    # Observed once with the csv reader and pandas alike: 71,911,571 prompt and
    # 13,481,988 output tokens over 30,731 rows (means 2340.0335, 438.7097), far above
    # the vLLM paper's ShareGPT means 161.31 / 337.99 (a different preprocessing).
    df = load_trace("sharegpt", rate=1.0).to_dataframe()
    assert df["prompt_len"].sum() == 71_911_571
    assert df["output_len"].sum() == 13_481_988
    assert df["prompt_len"].mean() == pytest.approx(2340.0335491848623, rel=1e-12)
    assert df["output_len"].mean() == pytest.approx(438.7097068107123, rel=1e-12)
    assert df["total_len"].max() <= 8192  # "filtered to at most 8k tokens"


@pytest.mark.parametrize("name", ["mooncake-conversation", "mooncake-synthetic"])
def test_mooncake_means_round_to_table_2(name):
    df = load_trace(name).to_dataframe()
    assert round(df["prompt_len"].mean()) == published.MOONCAKE_AVG_INPUT_LEN[name]
    assert round(df["output_len"].mean()) == published.MOONCAKE_AVG_OUTPUT_LEN[name]


# --- Mooncake block keys ----------------------------------------------------------


@pytest.mark.parametrize("name, total", [("mooncake-conversation", 288_500),
                                         ("mooncake-synthetic", 121_877)])
def test_mooncake_block_keys(name, total):
    w = load_trace(name)
    assert sum(len(r.block_keys) for r in w) == total
    for r in w:
        assert r.key_block_size == 512
        assert len(r.block_keys) == math.ceil(r.prompt_len / 512)
    assert w.metadata["key_block_size"] == 512


def test_every_conversation_request_starts_with_block_zero():
    assert all(r.block_keys[0] == 0 for r in load_trace("mooncake-conversation"))


@pytest.mark.parametrize("name, ratio", [("mooncake-conversation", 0.3664),
                                         ("mooncake-synthetic", 0.6396)])
def test_unbounded_prefix_replay_hit_ratio(name, ratio):
    # The numbers the data README quotes next to Table 2's 40% / 66% "cache ratio".
    seen: set[int] = set()
    hits = refs = 0
    for r in load_trace(name):
        k = 0
        while k < len(r.block_keys) and r.block_keys[k] in seen:
            k += 1
        hits += k
        refs += len(r.block_keys)
        seen.update(r.block_keys)
    assert hits / refs == pytest.approx(ratio, abs=1e-4)


def test_mooncake_loader_rejects_a_row_breaking_the_key_rule(monkeypatch):
    good = b'{"timestamp": 0, "input_length": 513, "output_length": 1, "hash_ids": [0, 1]}'
    bad = b'{"timestamp": 5, "input_length": 1024, "output_length": 1, "hash_ids": [0, 1, 2]}'
    monkeypatch.setattr(traces, "_read_bytes", lambda filename: good + b"\n" + bad + b"\n")
    parse = traces._mooncake_requests.__wrapped__  # bypass the cache of the real file
    with pytest.raises(ValueError, match=r"line 2: 3 hash_ids for input_length 1024"):
        parse("mooncake-conversation")
    monkeypatch.setattr(traces, "_read_bytes", lambda filename: good + b"\n")
    (request,) = parse("mooncake-conversation")
    assert request.block_keys == (0, 1) and request.key_block_size == 512


def test_mooncake_conversation_parses_fast():
    start = time.perf_counter()
    requests = traces._mooncake_requests.__wrapped__("mooncake-conversation")
    assert len(requests) == 12_031
    assert time.perf_counter() - start < 2.0


# --- loader options ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_limit_keeps_a_prefix(name):
    full, part = _load(name), _load(name, limit=100)
    assert part.requests == full.requests[:100]
    assert part.metadata["limit"] == 100 and full.metadata["limit"] is None
    assert len(_load(name, limit=0)) == 0


def test_repeated_loads_are_equal_and_independent():
    a, b = load_trace("azure-code"), load_trace("azure-code")
    assert a == b
    a.metadata["note"] = "mine"
    assert "note" not in load_trace("azure-code").metadata


def test_sharegpt_arrivals_are_seeded_poisson():
    w = load_trace("sharegpt", rate=4.0, seed=3)
    times = w.to_dataframe()["arrival_time"].to_numpy()
    np.testing.assert_array_equal(times, arrival_times(len(w), 4.0, seed=3))
    assert len(times) / times[-1] == pytest.approx(4.0, rel=0.03)
    assert load_trace("sharegpt", rate=4.0, seed=3) == w
    other = load_trace("sharegpt", rate=4.0, seed=4).to_dataframe()["arrival_time"]
    assert not np.array_equal(other.to_numpy(), times)
    assert (w.metadata["rate"], w.metadata["seed"], w.metadata["arrivals"]) == (4.0, 3, "poisson")
    assert all(r.arrival_time == 0.0 for r in load_trace("sharegpt", rate=math.inf, limit=10))


def test_per_trace_functions_match_load_trace():
    assert traces.load_sharegpt(rate=2.0, limit=50) == load_trace("sharegpt", rate=2.0, limit=50)
    assert traces.load_azure_conv(limit=5) == load_trace("azure-conv", limit=5)
    assert traces.load_azure_code(limit=5) == load_trace("azure-code", limit=5)
    assert traces.load_mooncake_conversation(limit=5) == load_trace("mooncake-conversation",
                                                                    limit=5)
    assert traces.load_mooncake_synthetic(limit=5) == load_trace("mooncake-synthetic", limit=5)


def test_provenance_metadata():
    meta = load_trace("mooncake-synthetic").metadata
    assert meta["source"] == "trace" and meta["file"] == "mooncake_synthetic_trace.jsonl.gz"
    assert meta["licence"] == "Apache-2.0" and "3cca71dac" in meta["origin"]
    assert load_trace("azure-conv").metadata["licence"] == "CC-BY-4.0"


# --- errors -----------------------------------------------------------------------


def test_sharegpt_needs_a_rate():
    with pytest.raises(ValueError, match="'sharegpt' has no timestamps: pass rate="):
        load_trace("sharegpt")
    with pytest.raises(ValueError, match="rate must be .* got -1.0"):
        load_trace("sharegpt", rate=-1.0)


def test_rate_is_rejected_for_timestamped_traces():
    with pytest.raises(ValueError, match="rate=2.0 does not apply to trace 'azure-conv'"):
        load_trace("azure-conv", rate=2.0)


def test_unknown_trace_lists_valid_names():
    with pytest.raises(ValueError, match="'lmsys'; valid names: sharegpt, azure-conv"):
        load_trace("lmsys")


@pytest.mark.parametrize("limit", [-1, 1.5, True, "10"])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit must be"):
        load_trace("azure-code", limit=limit)


# --- published numbers ------------------------------------------------------------


def test_vllm_fig2_shares():
    fig2 = published.VLLM_FIG2_KV_USAGE_PCT
    assert [fig2[s]["token_states"] for s in ("orca-max", "orca-pow2", "orca-oracle", "vllm")] \
        == [20.4, 26.8, 38.2, 96.3]
    assert tuple(fig2["orca-max"].values()) == (20.4, 13.3, 57.3, 8.9)
    assert tuple(fig2["orca-pow2"].values()) == (26.8, 17.9, 13.6, 41.6)
    assert tuple(fig2["orca-oracle"].values()) == (38.2, 25.2, 0.0, 36.6)
    for system in ("orca-max", "orca-pow2", "orca-oracle"):
        assert sum(fig2[system].values()) == pytest.approx(100.0, abs=0.15)
    assert published.VLLM_FIG2_SETTING["token_slots"] == 15_728  # "about 15.7K"
    with pytest.raises(TypeError):
        fig2["vllm"]["token_states"] = 0.0  # read-only


def test_other_published_numbers():
    fig15 = published.VLLM_FIG15_MEMORY_SAVED_PCT
    assert fig15[("sharegpt", "beam_search")] == (44.3, 66.3)
    assert all(lo < hi for lo, hi in fig15.values())
    assert published.MOONCAKE_CACHE_RATIO_PCT == {"mooncake-conversation": 40.0,
                                                  "mooncake-synthetic": 66.0}
    hit = published.MOONCAKE_TABLE1_LRU_HIT_RATE
    assert list(hit.values()) == [0.30, 0.40, 0.48, 0.50, 0.51]  # grows with capacity
