"""Workloads: fixed lengths, length distributions, prompts files in every accepted form, token counting."""

from __future__ import annotations

import json

import pytest

from planner.errors import UserError
from planner.plans.workload import Workload


def write_jsonl(path, records) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


def test_fixed_workload_statistics():
    w = Workload.fixed(512, 256, 1000)
    assert (w.prompt_len_mean, w.gen_len_mean, w.prompt_len_max, w.gen_len_max) == (512, 256, 512, 256)
    assert w.kv_tokens_per_slot == 512 + 128
    assert w.prefill_context == pytest.approx(256.5)
    assert w.generated_tokens == 256_000 and w.max_sequence_len == 768
    assert w.pme == pytest.approx(2 * 768 / ((1024 + 256) * 256))


def test_length_distribution_weights_slots_by_generation_length():
    w = Workload.from_lengths([100, 300], [10, 90])
    assert w.kv_tokens_per_slot == pytest.approx((10 * (100 + 5) + 90 * (300 + 45)) / 100)
    assert w.prefill_context == pytest.approx((100**2 + 300**2) / (2 * 400) + 0.5)
    assert w.prompt_hist == ((64, 127, 1), (256, 511, 1)) and w.gen_hist == ((8, 15, 1), (64, 127, 1))


def test_sliding_window_reads():
    w = Workload.fixed(100, 100, 1)
    assert w.window_read_tokens(None) == pytest.approx(149.5)
    assert w.window_read_tokens(50) == 50
    assert w.window_read_tokens(120) == pytest.approx((20 * (100 + 9.5) + 80 * 120) / 100)


def test_prompts_file_in_every_form(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "x" * 40, "max_tokens": 7},
            {"prompt_token_ids": [1, 2, 3]},
            {"messages": [{"role": "user", "content": "y" * 8}, {"role": "assistant", "content": ""}]},
            {
                "custom_id": "a",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 4}]}],
                    "max_completion_tokens": 5,
                },
            },
            {
                "custom_id": "b",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"prompt": "w" * 9, "max_tokens": 3},
            },
            "",
        ],
    )
    w = Workload.from_file(path, default_max_tokens=11)
    # bytes/4: 10; 3 ids; chat 3 + (4 + 2) + (4 + 0); chat 3 + 4 + 1; 3
    assert w.num_prompts == 5 and w.token_count == "bytes/4"
    assert w.prompt_len_mean == pytest.approx((10 + 3 + 13 + 8 + 3) / 5)
    assert w.gen_len_mean == pytest.approx((7 + 11 + 11 + 5 + 3) / 5) and w.gen_len_max == 11
    assert Workload.from_file(path, 11, num_prompts=1000).num_prompts == 1000


def test_tokenizer_counts_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello world hello again and again"}])
    w = Workload.from_file(path, 4, tokenizer_path=tmp_path)
    assert w.token_count == "tokenizer" and w.prompt_len_max == 6


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "malformed JSON"),
        ({"text": "hi"}, "unknown field .text."),
        ({"id": 3}, "exactly one of"),
        ({"prompt": "hi", "messages": []}, "exactly one of"),
        ({"prompt": ""}, "empty prompt"),
        ({"prompt_token_ids": []}, "empty prompt"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user"}]}, "messages\\[0\\]"),
    ],
)
def test_bad_lines_name_the_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(UserError, match=f"p.jsonl, line 2: .*{message}"):
        Workload.from_file(path, 16)
    skipped = Workload.from_file(path, 16, on_error="skip")
    assert skipped.num_prompts == 1


def test_n_counts_each_completion_and_the_context_caps_generation(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt_token_ids": [1] * 10, "n": 3, "max_tokens": 50}, {"prompt_token_ids": [1] * 40}],
    )
    w = Workload.from_file(path, 16, on_error="skip", max_context=32)
    assert w.num_prompts == 3 and w.gen_len_max == 22


@pytest.mark.parametrize("args", [(0, 10, 5), (10, -1, 5), (10, 10, 0), (10**8, 10, 5)])
def test_absurd_lengths_are_rejected(args):
    with pytest.raises(UserError):
        Workload.fixed(*args)


def test_missing_or_empty_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Workload.from_file(tmp_path / "nope.jsonl", 16)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no prompts"):
        Workload.from_file(tmp_path / "empty.jsonl", 16)
    with pytest.raises(UserError, match="tokenizer"):
        Workload.from_file(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}]), 16, tokenizer_path=tmp_path)


def test_dict_round_trip():
    w = Workload.from_lengths([5, 50, 500], [1, 10, 100], source="s", num_prompts=77)
    assert Workload.from_dict(w.to_dict()) == w
    with pytest.raises(UserError, match="unknown fields"):
        Workload.from_dict({**w.to_dict(), "extra": 1})


def test_kv_held_per_slot_is_the_full_length_when_sequences_grow_in_lockstep():
    equal = Workload.from_lengths([100, 300], [50, 50])
    assert equal.finishes_in_waves and equal.kv_held_tokens_per_slot == 200 + 50
    assert equal.kv_tokens_per_slot == pytest.approx(200 + 25)  # what a decode step reads on average
    varied = Workload.from_lengths([100, 300], [10, 90])
    assert not varied.finishes_in_waves and varied.kv_held_tokens_per_slot == varied.kv_tokens_per_slot


def test_the_sampler_modes_the_prompts_ask_for(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "greedy", "temperature": 0},
            {"prompt": "default temperature 1 samples"},
            {"prompt": "nucleus", "temperature": 0.7, "top_p": 0.9, "n": 2},
            {"prompt": "top_p on a greedy line sorts nothing", "temperature": 0, "top_p": 0.5},
        ],
    )
    w = Workload.from_file(path, 8)
    assert (w.sampled_share, w.top_p_share) == (3 / 5, 2 / 5)
    again = Workload.from_dict(json.loads(json.dumps(w.to_dict())))
    assert again == w
    older = {k: v for k, v in w.to_dict().items() if k not in ("sampled_share", "top_p_share")}
    assert Workload.from_dict(older).sampled_share == 0.0  # plans written before: priced greedy, as then
    assert Workload.fixed(8, 8, 4).sampled_share == 0.0
    with pytest.raises(UserError, match="0 <= top_p <= sampled <= 1"):
        Workload.from_dict({**w.to_dict(), "top_p_share": 0.9})
