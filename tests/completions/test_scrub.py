"""The scrubber's stream holdback and its escape-aware text: a provider key split across the
events of a stream, or spelled with escapes in a non-JSON error, reaches neither the client nor
the stored response. (The live end-to-end checks: tests/test_security.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from completions.providers.scrub import REDACTED, Scrubber
from completions.sse import Event
from completions.streaming import StreamAccount

KEY = "sk-test-0123456789abcdef"


def openai_chunk(text: str) -> Event:
    return Event(data=json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}))


def anthropic_delta(text: str) -> Event:
    return Event(
        data=json.dumps(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        ),
        event="content_block_delta",
    )


def responses_delta(text: str) -> Event:
    return Event(data=json.dumps({"type": "response.output_text.delta", "delta": text}))


def relayed(pieces: list[Event]) -> tuple[list[Event], str]:
    out = list(Scrubber(KEY).events(pieces))
    flavour = {"content_block_delta": "anthropic"}.get(pieces[0].event, "openai")
    if '"response.output_text.delta"' in pieces[0].data:
        flavour = "responses"
    acc = StreamAccount(flavour)
    for event in out:
        acc.feed(event)
    return out, acc.response()["text"]


@pytest.mark.parametrize("make", [openai_chunk, anthropic_delta, responses_delta])
@pytest.mark.parametrize(
    "cuts",
    [[3], [1], [len(KEY) - 1], [5, 12], list(range(1, len(KEY)))],
    ids=["after-prefix", "first-char", "last-char", "three-pieces", "char-by-char"],
)
def test_a_key_split_across_stream_events_is_replaced_where_it_began(make: object, cuts: list[int]) -> None:
    text = f"your key is {KEY}, done"
    at = len("your key is ")
    bounds = [0, *(at + c for c in cuts), len(text)]
    pieces = [make(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]  # type: ignore[operator]
    out, assembled = relayed(pieces)
    assert assembled == f"your key is {REDACTED}, done"
    assert KEY not in "".join(e.data for e in out)
    assert len(out) == len(pieces)  # each event is still sent, in order, some with less text


def test_text_that_only_begins_like_the_key_is_held_until_it_differs_then_sent_unchanged() -> None:
    pieces = [openai_chunk("hello sk-te"), Event(data='{"choices": [{"delta": {}}]}'), openai_chunk("a time")]
    scrubber = Scrubber(KEY).events(iter_with_marks(pieces, seen := []))
    first = next(scrubber)
    assert seen == [0, 1, 2]  # nothing could be sent before the third event said "not the key"
    rest = list(scrubber)
    assert [first, *rest] == pieces


def iter_with_marks(events: list[Event], seen: list[int]) -> Iterator[Event]:
    for n, event in enumerate(events):
        seen.append(n)
        yield event


def test_text_without_the_key_flows_event_by_event() -> None:
    pieces = [openai_chunk(w) for w in ("one ", "two ", "three")]
    seen: list[int] = []
    scrubber = Scrubber(KEY).events(iter_with_marks(pieces, seen))
    for n in range(3):
        assert next(scrubber) == pieces[n] and seen[-1] == n  # none held back


def test_what_was_held_is_sent_before_the_upstream_breaks_off() -> None:
    def broken() -> Iterator[Event]:
        yield openai_chunk("and sk-")
        raise ConnectionError("upstream gone")

    out: list[Event] = []
    with pytest.raises(ConnectionError):
        for event in Scrubber(KEY).events(broken()):
            out.append(event)
    assert out == [openai_chunk("and sk-")]


@pytest.mark.parametrize(
    "spelled",
    [
        "".join(f"\\u{ord(c):04x}" for c in KEY),
        "\\u0073" + KEY[1:],
        "".join(f"\\x{ord(c):02x}" for c in KEY),
        "".join(f"%{ord(c):02X}" for c in KEY),
    ],
)
def test_a_non_json_error_spelling_the_key_with_escapes_is_decoded_and_scrubbed(spelled: str) -> None:
    said = Scrubber(KEY).decoded_text(f"<html>upstream error: bad key {spelled} (retry)</html>")
    assert REDACTED in said
    for decode in (lambda t: t, lambda t: t.encode().decode("unicode_escape")):
        assert KEY not in decode(said)


def test_a_non_json_error_without_the_key_is_relayed_as_it_was() -> None:
    text = "<html>50% off \\u00e9 C:\\x41 path</html>"
    assert Scrubber(KEY).decoded_text(text) == text
