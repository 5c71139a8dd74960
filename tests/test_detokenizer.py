"""Incremental detokenization and stop strings, on the default model's tokenizer."""

from __future__ import annotations

import pytest

from kairos.detok.detokenizer import (
    ByteLevelDetokenizer,
    IncrementalDetokenizer,
    StopStringMatcher,
    byte_table,
    decoder,
)
from kairos.detok.output_processor import OutputProcessor
from kairos.wire.outputs import SeqOutput
from kairos.wire.sampling_params import SamplingParams

from conftest import needs_default_model


def stream(tok, text: str) -> list[str]:
    ids = tok(text, add_special_tokens=False).input_ids
    d = IncrementalDetokenizer(tok, prompt_token_ids=[])
    deltas = [d.add([t]) for t in ids]
    deltas.append(d.flush())
    return deltas


def test_multibyte_characters_split_across_tokens(default_tokenizer):
    text = "héllo wörld — 世界 🙂 ok"
    deltas = stream(default_tokenizer, text)
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_decoder_is_the_tokenizers_decode(default_tokenizer):
    tok = default_tokenizer
    ids = tok("Hi <|im_start|> there, wörld!", add_special_tokens=False).input_ids + [tok.eos_token_id, 0, 17, 300]
    for skip in (True, False):
        assert decoder(tok, skip)(ids) == tok.decode(ids, skip_special_tokens=skip)
    assert decoder(tok, True)(ids) != decoder(tok, False)(ids)  # the special tokens were there to skip

    class CleansUp:  # a tokenizer whose decode does more than its backend's: called as is
        backend_tokenizer = tok.backend_tokenizer
        clean_up_tokenization_spaces = True

        def decode(self, ids, skip_special_tokens):
            return f"cleaned {len(ids)} {skip_special_tokens}"

    assert decoder(CleansUp(), True)([1, 2]) == "cleaned 2 True"


def test_stop_matcher_across_deltas():
    m = StopStringMatcher(("o w", "zzz"))
    out = [m.feed("Hello"), m.feed(" wo"), m.feed("rld")]
    assert out[0] == ("Hel", None)  # "lo" held back: it could start "o w" (hold = 2)
    assert out[1] == ("l", "o w")
    m2 = StopStringMatcher(("world",), include=True)
    assert m2.feed("hello wor") == ("hello", None)  # hold = 4 chars
    assert m2.feed("ld!") == (" world", "world")


def test_earliest_stop_string_wins():
    m = StopStringMatcher(("b", "a"))
    assert m.feed("xxabab") == ("xx", "a")




@pytest.mark.parametrize("stop,include,expected", [
    ("is a", False, "Hello world, this "),
    ("o w", False, "Hell"),
    ("o w", True, "Hello w"),
    ("never", False, "Hello world, this is a test."),
])
def test_output_processor_cuts_stop_strings(default_tokenizer, stop, include, expected):
    params = SamplingParams(stop=(stop,), include_stop_str_in_output=include)
    proc = OutputProcessor(default_tokenizer)
    ro = proc.add_request("r", None, [1, 2], params)
    ids = default_tokenizer("Hello world, this is a test.", add_special_tokens=False).input_ids
    stopped = []
    for i, t in enumerate(ids):
        _, s = proc.process([SeqOutput("r", 0, [t], finish_reason="length" if i == len(ids) - 1 else None)])
        stopped += s
        if ro.finished:
            break
    out = ro.outputs[0]
    assert out.text == expected
    if stop == "never":
        assert (out.finish_reason, out.stop_reason, stopped) == ("length", None, [])
    else:
        assert (out.finish_reason, out.stop_reason, stopped) == ("stop", stop, [("r", 0)])


@pytest.mark.parametrize("min_tokens,expected,reason", [
    (0, "Hell", "stop"),  # the "o" of "Hello"
    (1, "Hello w", "stop"),  # "Hello" (one token) is not searched; " world" is
    (2, "Hello world, this is a test.", "length"),  # no "o" after " world"
])
@pytest.mark.parametrize("longer", [False, True])
def test_stop_strings_count_only_after_min_tokens(default_tokenizer, min_tokens, expected, reason, longer):
    # (a longer stop string held back beside "o" must not let "o" in "Hello" count later)
    stops = ("o", "xyzzy") if longer else ("o",)
    proc = OutputProcessor(default_tokenizer)
    ro = proc.add_request("r", None, [1, 2], SamplingParams(stop=stops, min_tokens=min_tokens))
    ids = default_tokenizer("Hello world, this is a test.", add_special_tokens=False).input_ids
    assert default_tokenizer.decode(ids[:2]) == "Hello world"
    for i, t in enumerate(ids):
        proc.process([SeqOutput("r", 0, [t], finish_reason="length" if i == len(ids) - 1 else None)])
        if ro.finished:
            break
    assert (ro.outputs[0].text, ro.outputs[0].finish_reason) == (expected, reason)


@pytest.mark.parametrize("min_tokens,stop,expected", [
    (1, "lo wor", "Hel"),  # it begins in "Hello" (not searched) and ends in " world": found
    (1, "Hell", "Hello world, this is a test."),  # it ends in "Hello": not
    (2, "ld, th", "Hello wor"),
    (4, "ld, th", "Hello world, this is a test."),  # it ends in the third token, " this"
])
def test_a_stop_string_across_the_min_tokens_point_is_found(default_tokenizer, min_tokens, stop, expected):
    proc = OutputProcessor(default_tokenizer)
    ro = proc.add_request("r", None, [1, 2], SamplingParams(stop=(stop,), min_tokens=min_tokens))
    ids = default_tokenizer("Hello world, this is a test.", add_special_tokens=False).input_ids
    assert [default_tokenizer.decode([t]) for t in ids[:4]] == ["Hello", " world", ",", " this"]
    text = ""
    for i, t in enumerate(ids):
        proc.process([SeqOutput("r", 0, [t], finish_reason="length" if i == len(ids) - 1 else None)])
        text += ro.outputs[0].delta
        if ro.finished:
            break
    out = ro.outputs[0]
    assert (out.text, text) == (expected, expected)  # (the deltas add up to the text)
    assert (out.finish_reason, out.stop_reason) == (("length", None) if expected.endswith(".") else ("stop", stop))


def test_several_outputs_of_one_sequence_in_one_call_add_up_in_delta(default_tokenizer):
    # a stream that fell behind processes every output waiting for it at once (server.serving.follow)
    proc = OutputProcessor(default_tokenizer)
    ro = proc.add_request("r", None, [1, 2], SamplingParams())
    ids = default_tokenizer("Hello world, this is", add_special_tokens=False).input_ids
    proc.process([SeqOutput("r", 0, [ids[0]])])
    assert ro.outputs[0].delta == "Hello"
    proc.process([SeqOutput("r", 0, [t]) for t in ids[1:]])
    assert ro.outputs[0].delta == " world, this is" and ro.outputs[0].text == "Hello world, this is"


def test_byte_level_text_is_the_decode_of_the_output_ids(default_tokenizer):
    """Random ids (specials, bytes of characters cut anywhere, an id past the vocabulary): the
    deltas add up to ``tokenizer.decode`` of the ids; a real text streams with no U+FFFD."""
    import random

    tok = default_tokenizer
    table = byte_table(tok)
    assert table is not None and len(table.ids) == len(tok)
    rng = random.Random(1)
    text_ids = tok("héllo wörld — 世界 🙂 ok, naïve café", add_special_tokens=False).input_ids
    for _ in range(300):
        cut = rng.randrange(len(text_ids))
        ids = text_ids[cut:] + [rng.choice([0, 1, 2, len(tok) + 5]) if rng.random() < 0.2 else rng.randrange(len(tok))
                                for _ in range(rng.randrange(6))]
        for skip in (True, False):
            d = ByteLevelDetokenizer(table, skip)
            deltas = [d.add([t]) for t in ids] + [d.flush()]
            assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)
    d = ByteLevelDetokenizer(table)
    deltas = [d.add([t]) for t in text_ids] + [d.flush()]
    assert "".join(deltas) == "héllo wörld — 世界 🙂 ok, naïve café" and not any("\ufffd" in x for x in deltas)


def test_byte_table_only_where_the_tokenizer_decodes_bytes(default_tokenizer):
    from tokenizers import decoders

    tok = default_tokenizer
    proc = OutputProcessor(tok)
    proc.add_request("r", None, [5, 6], SamplingParams())
    assert isinstance(proc.states["r"][1][0].detok, ByteLevelDetokenizer)

    class Backend:  # the default tokenizer's, with another decoder or another decode
        def __init__(self, decoder=None, upper=False):
            self.decoder = decoder or tok.backend_tokenizer.decoder
            self.upper = upper

        def __getattr__(self, name):
            return getattr(tok.backend_tokenizer, name)

        def decode(self, ids, skip_special_tokens):
            text = tok.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
            return text.upper() if self.upper else text

    class Tok:
        clean_up_tokenization_spaces = False

        def __init__(self, backend):
            self.backend_tokenizer = backend

    assert byte_table(Tok(Backend())) is not None
    assert byte_table(Tok(Backend(upper=True))) is None  # its decode is not the bytes: the check sees it
    assert byte_table(Tok(Backend(decoders.Metaspace()))) is None  # a SentencePiece-style decoder
    cleans = Tok(Backend())
    cleans.clean_up_tokenization_spaces = True
    assert byte_table(cleans) is None


@needs_default_model
def test_added_tokens_decode_by_the_byte_level_rule():
    """Added tokens go through the ByteLevel decoder too: one made of byte-map characters stands
    for those bytes ("ĠbarĊ" is " bar\\n", "é" alone is byte E9), any other for its text."""
    from kairos.loader import load_tokenizer
    from kairos.loader.default import default_model_path

    tok = load_tokenizer(default_model_path())
    tok.add_special_tokens({"additional_special_tokens": [f"<x{i}>" for i in range(50)]})
    tok.add_tokens(["ĠbarĊ", "é", "wörld!", "世界!"])
    table = byte_table(tok)
    assert table is not None
    new = tok.convert_tokens_to_ids(["ĠbarĊ", "é", "wörld!", "世界!", "<x7>"])
    ids = tok("def f():", add_special_tokens=False).input_ids + new + tok("return 1", add_special_tokens=False).input_ids
    for skip in (False, True):
        d = ByteLevelDetokenizer(table, skip)
        text = "".join(d.add([t]) for t in ids) + d.flush()
        assert text == tok.decode(ids, skip_special_tokens=skip)
        assert ("<x7>" in text) != skip
    # ("wörld!" is all byte-map characters too: ö stands for byte F6, which is not UTF-8 alone)
    assert text == "def f(): bar\n\ufffdw\ufffdrld!世界!return 1"


def test_logprob_bytes_are_the_tokens_own_bytes(default_tokenizer):
    """A token holding part of a character reads as U+FFFD alone; its ``bytes`` (OpenAI's field
    for rebuilding such text) are its own, so the tokens of "🙂" add up to its UTF-8."""
    from kairos.server.serving import chat_logprobs
    from kairos.wire.outputs import TokenLogprob

    tok = default_tokenizer
    ids = tok("🙂", add_special_tokens=False).input_ids
    assert len(ids) > 1  # (split across tokens: the case this is for)
    proc = OutputProcessor(tok)
    proc.add_request("r", None, [5], SamplingParams(logprobs=1))
    outs = [SeqOutput("r", 0, [t], logprobs=[TokenLogprob(-0.5, [(t, -0.5)])]) for t in ids]
    proc.process(outs)
    lps = proc.states["r"][0].outputs[0].logprobs
    assert "\ufffd" in lps[0].token
    assert bytes(b for lp in lps for b in lp.token_bytes) == "🙂".encode()
    assert [lp.top[0][3] for lp in lps] == [lp.token_bytes for lp in lps]
    content = chat_logprobs(proc.states["r"][0].outputs[0])["content"]
    assert bytes(b for c in content for b in c["bytes"]) == "🙂".encode()
