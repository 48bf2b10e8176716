"""Traces from files: Mooncake JSONL (plain or gzip) and CSV; one-line errors naming the line."""

import gzip
import json

import pytest

from paged_kv.sim import load_trace
from paged_kv.sim.replay import replay
from paged_kv.sim.traces import load_trace_file, replayable_traces

ROWS = [
    {"timestamp": 0, "input_length": 1100, "output_length": 20, "hash_ids": [7, 8, 9]},
    {"timestamp": 1500, "input_length": 1030, "output_length": 5, "hash_ids": [7, 8, 10]},
    {"timestamp": 1500, "input_length": 600, "output_length": 1, "hash_ids": [7, 11]},
]


def write_jsonl(path, rows, compress=False):
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


def write_csv(path, rows):
    lines = ["timestamp,input_length,output_length,hash_ids"]
    lines += [f"{r['timestamp']},{r['input_length']},{r['output_length']},"
              f"{' '.join(map(str, r['hash_ids']))}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def as_tuples(workload):
    return [(r.request_id, r.arrival_time, r.prompt_len, r.output_len, r.block_keys,
             r.key_block_size) for r in workload]


EXPECTED = [(0, 0.0, 1100, 20, (7, 8, 9), 512), (1, 1.5, 1030, 5, (7, 8, 10), 512),
            (2, 1.5, 600, 1, (7, 11), 512)]


@pytest.mark.parametrize("form", ["jsonl", "jsonl.gz", "gz-named-plain", "csv"])
def test_every_form_reads_the_same_requests(tmp_path, form):
    if form == "csv":
        path = write_csv(tmp_path / "t.csv", ROWS)
    elif form == "gz-named-plain":  # told apart by content, not by name
        path = write_jsonl(tmp_path / "t.jsonl.gz", ROWS)
    else:
        path = write_jsonl(tmp_path / f"t.{form}", ROWS, compress=form.endswith("gz"))
    workload = load_trace(str(path))
    assert as_tuples(workload) == EXPECTED
    assert as_tuples(load_trace(path, limit=2)) == EXPECTED[:2]
    assert workload.metadata["source"] == "file"
    result = replay(workload, None, "lru")
    assert list(result.requests["hit_blocks"]) == [0, 2, 1]


def test_optional_fields_and_block_size(tmp_path):
    rows = [{"input_length": 9, "hash_ids": [1, 2, 3], "block_size": 4},
            {"input_length": 8, "hash_ids": [1, 2], "block_size": 4}]
    workload = load_trace_file(write_jsonl(tmp_path / "t.jsonl", rows))
    assert as_tuples(workload) == [(0, 0.0, 9, 1, (1, 2, 3), 4), (1, 0.0, 8, 1, (1, 2), 4)]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"line 2: not JSON"),
    ('{"input_length": 10}', r"line 2: no 'hash_ids' field"),
    ('{"input_length": 10, "hash_ids": []}', r"line 2: hash_ids must be a non-empty list"),
    ('{"input_length": 10, "hash_ids": [1, 2]}', r"line 2: block_keys must hold 1 to"),
    ('{"input_length": 10, "hash_ids": ["a"]}', r"line 2: block_keys must hold integers"),
    ('{"input_length": 0, "hash_ids": [1]}', r"line 2: prompt_len must be an integer >= 1"),
    ('{"timestamp": -5, "input_length": 10, "hash_ids": [1]}', r"line 2: timestamp -5 ms"),
    ('{"input_length": 10, "hash_ids": [1], "block_size": 8}', r"line 2: block_size 8"),
    ("[1, 2]", r"line 2: expected a JSON object"),
    # loaded, then refused by the replay without a line number
    ('{"input_length": 1000, "hash_ids": [9001, 9001]}', r"line 2: hash_ids repeat a key"),
])
def test_a_bad_line_fails_with_one_line_naming_it(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_trace(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_bad_csv_rows_and_headers(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("input_length,hash_ids\n100,1\n100,x y\n")
    with pytest.raises(ValueError, match=r"bad.csv line 3: invalid literal"):
        load_trace(str(path))
    path.write_text("prompt,keys\n100,1\n")
    with pytest.raises(ValueError, match=r"line 1: the CSV header must name input_length"):
        load_trace(str(path))


def test_missing_file_and_unknown_name():
    with pytest.raises(ValueError, match="no trace file"):
        load_trace("/no/such/trace.jsonl")
    with pytest.raises(ValueError, match="or the path of a JSONL or CSV trace file"):
        load_trace("mooncake")


@pytest.mark.parametrize("name", sorted(replayable_traces()))
def test_every_trace_listed_for_replay_replays(name):
    result = replay(load_trace(name, limit=50), 100, "lru")
    assert result.requests["prompt_len"].sum() > 0
