"""shared/usage.py against a sample output of each agent CLI, built from its documented
format (sources in docs/usage.md), plus the generic ORCH_USAGE line and bad input."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from orchestrator.shared import usage as U

DATA = Path(__file__).resolve().parents[1] / "data" / "usage"


def parse(name: str, **kw) -> U.Usage:
    return U.parse_files([DATA / name], **kw)


def test_claude_code_result_prefers_model_usage_and_reported_cost():
    u = parse("claude-code.stream.jsonl")
    assert u.sources == ["claude"]
    assert u.cost_usd == pytest.approx(0.0407105)
    sonnet = u.models["claude-sonnet-4-5-20250929"]
    assert (sonnet.input_tokens, sonnet.output_tokens) == (9, 50)
    assert (sonnet.cache_read_tokens, sonnet.cache_write_tokens) == (27120, 5330)
    assert sonnet.cost_usd == pytest.approx(0.0289005)
    haiku = u.models["claude-haiku-4-5-20251001"]
    assert (haiku.input_tokens, haiku.output_tokens) == (8210, 720)
    # modelUsage (both models), not the result's `usage` (main model only), nor the
    # per-message usage of the assistant events
    assert u.input_tokens == 9 + 8210 and u.output_tokens == 50 + 720
    assert u.unpriced_models == [] and u.malformed_lines == 0


def test_claude_code_before_its_result_is_estimated_from_its_messages():
    """A running (or killed) Claude Code has no result event yet: its assistant messages'
    usage, priced, is the estimate the budget watch sees."""
    lines = (DATA / "claude-code.stream.jsonl").read_bytes().splitlines()[:-1]
    u = U.parse_lines(lines)
    assert u.sources == ["assistant"]
    assert (u.input_tokens, u.output_tokens) == (3 + 6, 9 + 41)  # msg_01A counted once
    expected = (9 * 3 + 50 * 15 + (11000 + 16120) * 0.3 + (5120 + 210) * 3.75) / 1e6
    assert u.cost_usd == pytest.approx(expected)


def test_claude_code_result_without_model_usage_uses_usage():
    line = (
        b'{"type":"result","subtype":"success","total_cost_usd":0.5,'
        b'"usage":{"input_tokens":10,"output_tokens":20,"cache_read_input_tokens":30,'
        b'"cache_creation_input_tokens":40}}'
    )
    u = U.parse_lines([line])
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (
        10,
        20,
        30,
        40,
    )
    assert u.cost_usd == 0.5 and u.sources == ["claude"]


def test_codex_turn_completed_tokens_priced_by_the_configured_model():
    u = parse("codex.exec.jsonl", default_model="gpt-5-codex")
    assert u.sources == ["codex"]
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (26549 - 22272, 22272, 1590)
    expected = (4277 * 1.25 + 1590 * 10 + 22272 * 0.125) / 1e6
    assert u.cost_usd == pytest.approx(expected)
    assert u.unpriced_models == []


def test_codex_without_a_model_leaves_the_cost_unknown_and_says_so():
    u = parse("codex.exec.jsonl")
    assert u.cost_usd == 0.0
    assert u.unpriced_models == ["(unknown model)"]
    assert u.output_tokens == 1590


def test_amp_sums_assistant_messages_once_per_message_id():
    u = parse("amp.stream.jsonl")
    assert u.sources == ["assistant"]
    assert (u.input_tokens, u.output_tokens) == (12 + 20, 80 + 120)
    assert (u.cache_write_tokens, u.cache_read_tokens) == (9000 + 400, 9000)
    expected = (32 * 3 + 200 * 15 + 9000 * 0.3 + 9400 * 3.75) / 1e6
    assert u.cost_usd == pytest.approx(expected)
    assert list(u.models) == ["claude-sonnet-4-5-20250929"]


def test_gemini_result_stats_priced_by_the_init_model():
    u = parse("gemini.stream.jsonl")
    assert u.sources == ["gemini"]
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (12210, 18000, 1664)
    assert list(u.models) == ["gemini-2.5-pro"]
    assert u.cost_usd == pytest.approx((12210 * 1.25 + 1664 * 10 + 18000 * 0.31) / 1e6)


def test_opencode_step_finish_cost_and_tokens_summed():
    u = parse("opencode.run.jsonl")
    assert u.sources == ["opencode"]
    assert u.cost_usd == pytest.approx(0.0215 + 0.0043)
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (14430, 560, 13900)


def test_aider_analytics_log_message_send_costs_summed():
    u = parse("aider.analytics.jsonl")
    assert u.sources == ["aider"]
    assert u.cost_usd == pytest.approx(0.02451 + 0.022431)
    assert (u.input_tokens, u.output_tokens) == (6120 + 7002, 410 + 95)
    assert list(u.models) == ["anthropic/claude-sonnet-4-5-20250929"]


def test_orch_usage_lines_add_up_and_price_when_no_cost_given():
    lines = [
        b"scripted agent: t attempt 1",
        b'ORCH_USAGE {"input_tokens": 1000, "output_tokens": 200, "cost_usd": 0.25}\n',
        b'  ORCH_USAGE {"input_tokens": 1000000, "output_tokens": 0, "model": "gpt-5"}',
    ]
    u = U.parse_lines(lines)
    assert u.sources == ["orch"]
    assert (u.input_tokens, u.output_tokens) == (1_001_000, 200)
    assert u.cost_usd == pytest.approx(0.25 + 1.25)


def test_price_overrides_and_longest_prefix():
    prices = U.price_table({"gpt-5-codex": U.Price(input=2.0, output=20.0)})
    assert U.find_price(prices, "gpt-5-codex-high") == prices["gpt-5-codex"]
    assert U.find_price(prices, "gpt-5-mini-2025") == U.DEFAULT_PRICES["gpt-5-mini"]
    assert U.find_price(prices, "openrouter/anthropic/claude-opus-4-1") is not None
    assert U.find_price(prices, "llama-3") is None and U.find_price(prices, "") is None
    u = U.parse_lines(
        [b'ORCH_USAGE {"input_tokens": 1000000, "output_tokens": 1000000}'],
        prices=prices,
        default_model="gpt-5-codex",
    )
    assert u.cost_usd == pytest.approx(22.0)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-sonnet-4-5[1m]", "claude-sonnet-4-5"),
        ("anthropic/claude-haiku-4-5", "claude-haiku-4-5"),
        ("gpt-5-codex", "gpt-5"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
        # Another version is never priced as its predecessor: it is left unpriced.
        ("claude-opus-4-6", None),
        ("claude-opus-5", None),
        ("gpt-5.1", None),
        ("gpt-50", None),
        ("claude-haiku-4", None),
    ],
)
def test_a_key_covers_dated_and_variant_ids_but_never_another_version(
    model: str, key: str | None
) -> None:
    found = U.find_price(U.DEFAULT_PRICES, model)
    assert found == (U.DEFAULT_PRICES[key] if key else None), model


@pytest.mark.parametrize(
    "line",
    [
        b'ORCH_USAGE {"input_tokens": -5}',
        b'ORCH_USAGE {"input_tokens": "many"}',
        b'ORCH_USAGE {"input_tokens": 1, "bogus": 2}',
        b"ORCH_USAGE not json",
        b'ORCH_USAGE {"cost_usd": 1e300}',
        b'{"type":"turn.completed","usage":{"input_tokens":"x"}}',
        b'{"type":"result","total_cost_usd":"free"}',
        b'{"type":"step_finish","part":{"cost":-1}}',
    ],
)
def test_malformed_usage_lines_are_counted_never_raised(line: bytes):
    u = U.parse_lines([line, b'ORCH_USAGE {"input_tokens": 7, "output_tokens": 1}'])
    assert u.malformed_lines == 1
    assert u.first_error and "\n" not in u.first_error
    assert u.input_tokens == 7  # the good line still counts


def test_garbage_and_huge_lines_are_skipped(tmp_path: Path):
    log = tmp_path / "agent.log"
    huge = b'{"type":"result","total_cost_usd":9,' + b'"x":"' + b"a" * (U.MAX_LINE_BYTES + 10)
    with log.open("wb") as f:
        f.write(b"\x00\xff\xfe binary garbage {not json\n")
        f.write(b'{"type": 5}\n{"type":"assistant","message":7}\n')
        f.write(huge + b'"}\n')
        f.write(b'ORCH_USAGE {"input_tokens": 3, "output_tokens": 4, "cost_usd": 0.01}\n')
        f.write(b"[" * 100_000 + b"\n")
    u = U.parse_files([log, tmp_path / "missing.jsonl"])
    assert (u.input_tokens, u.output_tokens, u.cost_usd) == (3, 4, 0.01)
    assert u.malformed_lines == 1  # the assistant line whose message is not an object


def test_usage_add_and_json_shape():
    a = parse("opencode.run.jsonl")
    b = parse("aider.analytics.jsonl")
    total = U.Usage()
    total.add(a)
    total.add(b)
    assert total.cost_usd == pytest.approx(a.cost_usd + b.cost_usd)
    assert total.sources == ["aider", "opencode"]
    data = msgspec.json.decode(msgspec.json.encode(total))
    assert {"input_tokens", "output_tokens", "cost_usd", "models", "unpriced_models"} <= set(data)


def test_budget_tail_reads_only_what_was_appended_and_joins_partial_lines(tmp_path: Path):
    from orchestrator.daemon.budget import _Tail

    log = tmp_path / "agent.log"
    tail = _Tail([log, tmp_path / "usage.jsonl"], U.UsageParser())
    assert tail.update() == 0.0  # no file yet
    log.write_bytes(b'noise\nORCH_USAGE {"cost_usd": 0.5}\nORCH_USAGE {"cost_')
    assert tail.update() == 0.5  # the partial line waits for its end
    with log.open("ab") as f:
        f.write(b'usd": 0.25}\n' + b"x" * (U.MAX_LINE_BYTES + 5))
    assert tail.update() == pytest.approx(0.75)
    with log.open("ab") as f:  # the end of the over-long line is skipped, then parsing goes on
        f.write(b'"}\nORCH_USAGE {"cost_usd": 1}\n')
    assert tail.update() == pytest.approx(1.75)
    assert tail.update() == pytest.approx(1.75)  # nothing new: nothing counted twice
