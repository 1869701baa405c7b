"""Token usage and cost that coding agents report in their output (pure, no I/O but reads).

One attempt's agent log (``runs/<ticket>/<attempt>/agent.log``, stdout and stderr
combined) and its optional usage file (``{usage_file}``) are scanned line by line.
Every format is documented in docs/usage.md with its source; in short:

=============  =====================================================  ==================
Agent          Line                                                   Gives
=============  =====================================================  ==================
any            ``ORCH_USAGE {"input_tokens": N, "output_tokens": N,   tokens, cost
               "cost_usd": X}`` (each line adds to the totals)
Claude Code    ``--output-format stream-json``: final ``result`` event  cost, tokens/model
               (``total_cost_usd``; ``modelUsage`` preferred to
               ``usage``)
Amp            ``--stream-json``: ``assistant`` events carry            tokens/model
               ``message.usage``; summed once per message id
Codex CLI      ``exec --json``: ``turn.completed`` events ``usage``      tokens
Gemini CLI     ``--output-format stream-json``: ``result`` ``stats``     tokens
               (model from the ``init`` event)
OpenCode       ``run --format json``: ``step_finish`` ``part.cost`` and  cost, tokens
               ``part.tokens``
Aider          ``--analytics-log FILE``: ``message_send`` events with    cost, tokens/model
               ``cost``, ``prompt_tokens``, ``completion_tokens``
=============  =====================================================  ==================

Where only tokens are reported, the cost comes from :data:`DEFAULT_PRICES` (USD per
million tokens) merged with the config's ``usage.prices``; a model found in neither
is listed in :attr:`Usage.unpriced_models` instead of being guessed.

Decoding uses msgspec with typed structs: a value of the wrong type or a negative
count makes the line *malformed* (counted, its first error kept, never raised).
Lines longer than :data:`MAX_LINE_BYTES` are skipped, as are lines that are not JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

import msgspec

#: Longest line that is parsed (bytes); longer lines are skipped unread.
MAX_LINE_BYTES = 4 << 20
#: The generic usage line's prefix (docs/usage.md).
ORCH_USAGE_PREFIX = b"ORCH_USAGE "

Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Dollars = Annotated[float, msgspec.Meta(ge=0, le=10**6)]


class Price(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """List price of one model, USD per million tokens."""

    input: Annotated[float, msgspec.Meta(ge=0)]
    output: Annotated[float, msgspec.Meta(ge=0)]
    cache_read: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Cached input read; default: ``input``."""
    cache_write: Annotated[float, msgspec.Meta(ge=0)] | None = None
    """Input written to the cache; default: ``input``."""


#: Built-in list prices (USD per million tokens), as listed in docs/usage.md with
#: their sources: Anthropic's pricing page (platform.claude.com/docs/en/about-claude/pricing),
#: openai.com/api/pricing, and ai.google.dev/gemini-api/docs/pricing (the <= 200k-token
#: prompt tier). A key covers its dated and variant ids (see :func:`find_price`), never
#: another version: ``claude-opus-4`` prices ``claude-opus-4-20250514`` but not
#: ``claude-opus-4-5``, which costs a third as much. Override or extend them in
#: config.yaml (``usage.prices``).
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4": Price(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75),
    "claude-opus-4-1": Price(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75),
    "claude-opus-4-5": Price(input=5.0, output=25.0, cache_read=0.5, cache_write=6.25),
    "claude-sonnet-4": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "claude-sonnet-4-5": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "claude-haiku-4-5": Price(input=1.0, output=5.0, cache_read=0.1, cache_write=1.25),
    "claude-3-5-haiku": Price(input=0.8, output=4.0, cache_read=0.08, cache_write=1.0),
    "gpt-5": Price(input=1.25, output=10.0, cache_read=0.125),
    "gpt-5-mini": Price(input=0.25, output=2.0, cache_read=0.025),
    "gpt-5-nano": Price(input=0.05, output=0.4, cache_read=0.005),
    "gemini-2.5-pro": Price(input=1.25, output=10.0, cache_read=0.31),
    "gemini-2.5-flash": Price(input=0.3, output=2.5, cache_read=0.075),
}

#: What may follow a price key in a model id it covers: nothing, or a separator and
#: anything but a short version number. ``-20250514`` (a date), ``-codex-high`` and
#: ``-latest`` are covered; ``-5`` and ``.1`` are other versions, priced differently.
_OTHER_VERSION = re.compile(r"[-_.]\d{1,2}(?:\D|$)")


class ModelUsage(msgspec.Struct, kw_only=True):
    """Tokens and cost of one model (``""``: the output named no model)."""

    input_tokens: int = 0
    """Input tokens not read from a cache."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    """Reported cost plus the priced cost of tokens reported without one."""


class Usage(msgspec.Struct, kw_only=True):
    """What one attempt (or a sum of attempts) used. JSON shape in docs/usage.md."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    """Sum of the known costs (reported, or priced from the price table)."""
    models: dict[str, ModelUsage] = msgspec.field(default_factory=dict)
    sources: list[str] = msgspec.field(default_factory=list)
    """Formats found: ``orch``, ``claude`` (a ``result`` event), ``assistant`` (summed
    assistant messages: Amp, or Claude Code without its ``result`` yet), ``codex``,
    ``gemini``, ``opencode``, ``aider``."""
    unpriced_models: list[str] = msgspec.field(default_factory=list)
    """Models whose tokens came without a cost and have no price: their cost is missing."""
    malformed_lines: int = 0
    """Usage lines that did not decode (wrong type, negative number, bad JSON)."""
    first_error: str = ""

    @property
    def tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_read_tokens
            + self.cache_write_tokens
        )

    def add(self, other: Usage) -> None:
        """Add ``other`` into this usage (totals over attempts)."""
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_usd += other.cost_usd
        for name, mu in other.models.items():
            mine = self.models.setdefault(name, ModelUsage())
            mine.input_tokens += mu.input_tokens
            mine.output_tokens += mu.output_tokens
            mine.cache_read_tokens += mu.cache_read_tokens
            mine.cache_write_tokens += mu.cache_write_tokens
            mine.cost_usd += mu.cost_usd
        self.sources = sorted(set(self.sources) | set(other.sources))
        self.unpriced_models = sorted(set(self.unpriced_models) | set(other.unpriced_models))
        self.malformed_lines += other.malformed_lines
        self.first_error = self.first_error or other.first_error


# --- the formats ---------------------------------------------------------------


class _Envelope(msgspec.Struct):
    """Only the tag of a JSON line; other fields are read by the specific struct."""

    type: str | None = None
    event: str | None = None


class OrchUsageLine(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The generic line: ``ORCH_USAGE {"input_tokens": N, "output_tokens": N, "cost_usd": X}``."""

    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    cost_usd: Dollars | None = None
    model: str = ""


class _AnthropicUsage(msgspec.Struct):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_creation_input_tokens: Count | None = 0
    cache_read_input_tokens: Count | None = 0


class _ClaudeModelUsage(msgspec.Struct):
    inputTokens: Count = 0  # noqa: N815 (the tool's field names)
    outputTokens: Count = 0  # noqa: N815
    cacheReadInputTokens: Count = 0  # noqa: N815
    cacheCreationInputTokens: Count = 0  # noqa: N815
    costUSD: Dollars | None = None  # noqa: N815


class _GeminiStats(msgspec.Struct):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cached: Count = 0
    input: Count | None = None
    """Input tokens not from the cache (``input_tokens`` = ``input`` + ``cached``)."""


class _ResultEvent(msgspec.Struct):
    """Claude Code / Amp ``result`` (cost, usage, modelUsage) or Gemini ``result`` (stats)."""

    total_cost_usd: Dollars | None = None
    usage: _AnthropicUsage | None = None
    modelUsage: dict[str, _ClaudeModelUsage] | None = None  # noqa: N815
    stats: _GeminiStats | None = None


class _AssistantMessage(msgspec.Struct):
    id: str = ""
    model: str = ""
    usage: _AnthropicUsage | None = None


class _AssistantEvent(msgspec.Struct):
    message: _AssistantMessage | None = None


class _InitEvent(msgspec.Struct):
    model: str = ""


class _CodexUsage(msgspec.Struct):
    input_tokens: Count = 0
    cached_input_tokens: Count = 0
    output_tokens: Count = 0


class _CodexTurn(msgspec.Struct):
    usage: _CodexUsage


class _OpenCodeCache(msgspec.Struct):
    read: Count = 0
    write: Count = 0


class _OpenCodeTokens(msgspec.Struct):
    input: Count = 0
    output: Count = 0
    reasoning: Count = 0
    cache: _OpenCodeCache | None = None


class _OpenCodePart(msgspec.Struct):
    cost: Dollars | None = None
    tokens: _OpenCodeTokens | None = None


class _OpenCodeStep(msgspec.Struct):
    part: _OpenCodePart


class _AiderProps(msgspec.Struct):
    main_model: str = ""
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cost: Dollars | None = None


class _AiderEvent(msgspec.Struct):
    properties: _AiderProps


_envelope = msgspec.json.Decoder(_Envelope)
_orch = msgspec.json.Decoder(OrchUsageLine)
_result = msgspec.json.Decoder(_ResultEvent)
_assistant = msgspec.json.Decoder(_AssistantEvent)
_init = msgspec.json.Decoder(_InitEvent)
_codex = msgspec.json.Decoder(_CodexTurn)
_opencode = msgspec.json.Decoder(_OpenCodeStep)
_aider = msgspec.json.Decoder(_AiderEvent)


class _Part(msgspec.Struct):
    """One contribution: tokens of a model and, when reported, their cost."""

    source: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None


class UsageParser:
    """Feed lines (bytes, without or with their newline), then :meth:`result`.

    Args:
        prices: model → price, merged over :data:`DEFAULT_PRICES` by the caller
            (see :func:`price_table`).
        default_model: the model assumed for tokens whose output names none
            (Codex's events carry no model; config ``usage.model``).
    """

    def __init__(self, prices: dict[str, Price] | None = None, default_model: str = "") -> None:
        self.prices = DEFAULT_PRICES if prices is None else prices
        self.default_model = default_model
        self.parts: list[_Part] = []
        self.results: list[_Part] = []
        """Claude Code / Amp ``result`` totals; when present, assistant messages are not summed."""
        self.assistant: dict[str, _Part] = {}
        """Amp: usage per assistant message id (a message repeats per content block)."""
        self.gemini_model = ""
        self.sources: set[str] = set()
        self.malformed = 0
        self.first_error = ""

    def feed(self, line: bytes) -> None:
        """Take one line; never raises for any content."""
        line = line.strip()
        if len(line) > MAX_LINE_BYTES:
            return
        if line.startswith(ORCH_USAGE_PREFIX):
            self._try("orch", line[len(ORCH_USAGE_PREFIX) :], self._orch)
        elif line.startswith(b"{") and (
            b'"type"' in line or b'"event"' in line
        ):  # cheap filter before decoding
            try:
                env = _envelope.decode(line)
            except msgspec.DecodeError:
                return  # not JSON, or a tag of another type: not a usage line
            if env.type == "result":
                self._try("result", line, self._result)
            elif env.type == "assistant":
                self._try("assistant", line, self._assistant)
            elif env.type == "init":
                self._try("gemini", line, self._init)
            elif env.type == "turn.completed":
                self._try("codex", line, self._codex)
            elif env.type == "step_finish":
                self._try("opencode", line, self._opencode)
            elif env.event == "message_send":
                self._try("aider", line, self._aider)

    def _try(self, what: str, data: bytes, handler: Callable[[bytes], None]) -> None:
        try:
            handler(data)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self.malformed += 1
            if not self.first_error:
                self.first_error = f"{what} line: {str(exc).splitlines()[0][:200]}"

    def _orch(self, data: bytes) -> None:
        u = _orch.decode(data)
        self.sources.add("orch")
        self.parts.append(
            _Part(
                "orch",
                u.model,
                u.input_tokens,
                u.output_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.cost_usd,
            )
        )

    def _result(self, data: bytes) -> None:
        r = _result.decode(data)
        if r.stats is not None:  # Gemini CLI
            s = r.stats
            fresh = s.input if s.input is not None else max(0, s.input_tokens - s.cached)
            self.sources.add("gemini")
            self.parts.append(
                _Part("gemini", self.gemini_model, fresh, s.output_tokens, s.cached, 0, None)
            )
            return
        if r.modelUsage:  # Claude Code: per model, with cost
            self.sources.add("claude")
            models = list(r.modelUsage.items())
            split = r.total_cost_usd is not None and any(m.costUSD is None for _, m in models)
            for i, (name, m) in enumerate(models):
                cost = m.costUSD
                if split:  # per-model cost missing: the total goes to the first model
                    cost = r.total_cost_usd if i == 0 else 0.0
                self.results.append(
                    _Part(
                        "claude",
                        name,
                        m.inputTokens,
                        m.outputTokens,
                        m.cacheReadInputTokens,
                        m.cacheCreationInputTokens,
                        cost,
                    )
                )
        elif r.usage is not None or r.total_cost_usd is not None:
            self.sources.add("claude")
            u = r.usage or _AnthropicUsage()
            self.results.append(
                _Part(
                    "claude",
                    "",
                    u.input_tokens,
                    u.output_tokens,
                    u.cache_read_input_tokens or 0,
                    u.cache_creation_input_tokens or 0,
                    r.total_cost_usd,
                )
            )

    def _assistant(self, data: bytes) -> None:
        ev = _assistant.decode(data)
        msg = ev.message
        if msg is None or msg.usage is None:
            return
        u = msg.usage
        key = msg.id or f"#{len(self.assistant)}"
        self.assistant[key] = _Part(
            "assistant",
            msg.model,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens or 0,
            u.cache_creation_input_tokens or 0,
            None,
        )

    def _init(self, data: bytes) -> None:
        self.gemini_model = _init.decode(data).model or self.gemini_model

    def _codex(self, data: bytes) -> None:
        u = _codex.decode(data).usage
        self.sources.add("codex")
        cached = min(u.cached_input_tokens, u.input_tokens)
        self.parts.append(
            _Part("codex", "", u.input_tokens - cached, u.output_tokens, cached, 0, None)
        )

    def _opencode(self, data: bytes) -> None:
        part = _opencode.decode(data).part
        t = part.tokens or _OpenCodeTokens()
        cache = t.cache or _OpenCodeCache()
        self.sources.add("opencode")
        self.parts.append(
            _Part(
                "opencode",
                "",
                t.input,
                t.output + t.reasoning,
                cache.read,
                cache.write,
                part.cost,
            )
        )

    def _aider(self, data: bytes) -> None:
        p = _aider.decode(data).properties
        self.sources.add("aider")
        self.parts.append(
            _Part("aider", p.main_model, p.prompt_tokens, p.completion_tokens, 0, 0, p.cost)
        )

    def result(self) -> Usage:
        """The totals of everything fed so far."""
        parts = list(self.parts)
        if self.results:
            parts += self.results
        elif self.assistant:  # Amp, or Claude Code before its result: sum the messages
            self.sources.add("assistant")
            parts += self.assistant.values()
        usage = Usage(
            sources=sorted(self.sources),
            malformed_lines=self.malformed,
            first_error=self.first_error,
        )
        unpriced: set[str] = set()
        for p in parts:
            model = p.model or self.default_model
            cost = p.cost_usd
            if cost is None:
                price = find_price(self.prices, model)
                if price is None:
                    if p.input_tokens or p.output_tokens or p.cache_read_tokens:
                        unpriced.add(model or "(unknown model)")
                    cost = 0.0
                else:
                    cost = cost_of(price, p)
            mu = usage.models.setdefault(model, ModelUsage())
            for target in (usage, mu):
                target.input_tokens += p.input_tokens
                target.output_tokens += p.output_tokens
                target.cache_read_tokens += p.cache_read_tokens
                target.cache_write_tokens += p.cache_write_tokens
                target.cost_usd += cost
        usage.unpriced_models = sorted(unpriced)
        return usage


def find_price(prices: dict[str, Price], model: str) -> Price | None:
    """The price of ``model``, or None when no key covers it (it is then unpriced).

    A ``provider/`` prefix is dropped (``anthropic/claude-sonnet-4-5``). An exact key
    wins; else the longest key that ``model`` starts with, provided the rest is not
    another version number (``_OTHER_VERSION``): a new model is left unpriced rather
    than priced as its predecessor.
    """
    if not model:
        return None
    if model in prices:
        return prices[model]
    name = model.rsplit("/", 1)[-1]
    covering = (
        k
        for k in prices
        if name.startswith(k) and not _OTHER_VERSION.match(name, len(k)) and _boundary(name, k)
    )
    best = max(covering, key=len, default=None)
    return prices[best] if best is not None else None


def _boundary(name: str, key: str) -> bool:
    """True if ``key`` ends ``name`` or is followed by a separator (not mid-word)."""
    return len(name) == len(key) or name[len(key)] in "-_.:@["


def cost_of(price: Price, part: _Part | ModelUsage) -> float:
    """USD for the tokens of ``part`` at ``price`` (per million tokens)."""
    read = price.cache_read if price.cache_read is not None else price.input
    write = price.cache_write if price.cache_write is not None else price.input
    return (
        part.input_tokens * price.input
        + part.output_tokens * price.output
        + part.cache_read_tokens * read
        + part.cache_write_tokens * write
    ) / 1_000_000


def price_table(overrides: dict[str, Price] | None) -> dict[str, Price]:
    """:data:`DEFAULT_PRICES` with the config's ``usage.prices`` over it."""
    return {**DEFAULT_PRICES, **(overrides or {})}


def iter_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path``; a line longer than :data:`MAX_LINE_BYTES` is yielded as
    ``b""`` (skipped) without holding it in memory. A missing file yields nothing."""
    try:
        f = path.open("rb")
    except OSError:
        return
    with f:
        while True:
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield b""
                continue
            yield line


def parse_lines(
    lines: Iterable[bytes], prices: dict[str, Price] | None = None, default_model: str = ""
) -> Usage:
    """Usage in ``lines`` (see the module docstring for the formats)."""
    parser = UsageParser(prices, default_model)
    for line in lines:
        parser.feed(line)
    return parser.result()


def parse_files(
    paths: Iterable[Path], prices: dict[str, Price] | None = None, default_model: str = ""
) -> Usage:
    """Usage in the files ``paths`` (missing files count as empty), as one run."""
    parser = UsageParser(prices, default_model)
    for path in paths:
        for line in iter_lines(path):
            parser.feed(line)
    return parser.result()
