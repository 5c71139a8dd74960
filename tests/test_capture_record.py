"""The capture record: a restart on the same stack skips the replay checks of sizes an earlier
start verified, and skips capture where a check failed; any change to the stack is a new key.
On CPU with ``eager_capture`` (as tests/test_decode_graphs.py)."""

from __future__ import annotations

import os

import pytest
import torch

from kairos.kernels import cpu
from kairos.wire.sampling_params import SamplingParams
from kairos.worker import capture_record
from kairos.worker.capture_record import CaptureRecord, enable_decode_graphs, model_key, stack_key
from kairos.worker.decode_graphs import DecodeGraphs, capture_sizes, eager_capture

from conftest import hf_greedy
from engine_helpers import GREEDY, make_engine, prompts_of, run

pytestmark = pytest.mark.skipif(cpu.load() is None, reason="the CPU decode kernel is needed for static block tables")


def start(path, directory, capture=eager_capture, calls=None):
    """An engine as a fresh start makes it, graphs enabled through the record in ``directory``."""
    engine = make_engine(path, block_size=4, max_num_seqs=8, num_blocks=64)

    def counted(fn):
        if calls is not None:
            calls.append("capture")
        return capture(fn)

    enable_decode_graphs(engine.runner, capture_sizes(8), engine.max_model_len, counted, 60, model_key(path),
                         directory)
    return engine


def test_a_restart_trusts_the_sizes_an_earlier_start_checked(tiny_llama, tmp_path, monkeypatch):
    model, path = tiny_llama
    eager_runs = []
    real = DecodeGraphs._eager
    monkeypatch.setattr(DecodeGraphs, "_eager", lambda self, n: eager_runs.append(n) or real(self, n))
    start(path, tmp_path)
    # a probe of the logits' width, captures (largest first), then per size a check: its replay
    # (with eager_capture, an eager run too) and the eager step it must match
    assert eager_runs == [1] + [8, 4, 2, 1] + [1, 1, 2, 2, 4, 4, 8, 8]
    (record_file,) = tmp_path.glob("*.json")
    assert capture_record.load(tmp_path, record_file.stem) == CaptureRecord([1, 2, 4, 8], None,
                                                                            pytest.approx(0.0, abs=60))
    eager_runs.clear()
    engine = start(path, tmp_path)
    assert eager_runs == [1, 8, 4, 2, 1]  # the probe and the captures alone
    assert sorted(engine.runner.graphs.graphs) == [1, 2, 4, 8]
    prompts = prompts_of([5, 17, 33])
    done = run(engine, {0: [(str(i), p, SamplingParams(max_tokens=8, **GREEDY)) for i, p in enumerate(prompts)]})
    assert [done[(str(i), 0)][0] for i in range(3)] == [hf_greedy(model, p, 8) for p in prompts]


def test_a_failed_check_is_remembered_and_capture_skipped(tiny_llama, tmp_path, caplog):
    def drifting(fn):
        out = fn()
        return (lambda: out.copy_(fn() + 1.0)), out

    engine = start(tiny_llama[1], tmp_path, drifting)
    assert engine.runner.graphs is None
    (record_file,) = tmp_path.glob("*.json")
    assert capture_record.load(tmp_path, record_file.stem).bad == 1  # sizes are checked smallest first
    calls = []
    engine = start(tiny_llama[1], tmp_path, eager_capture, calls)
    assert engine.runner.graphs is None and calls == []
    assert "disagreed with the eager step when this stack was last checked" in caplog.text
    record_file.unlink()  # as the warning says: checked again
    assert start(tiny_llama[1], tmp_path, eager_capture, calls).runner.graphs is not None and calls


def test_the_key_follows_the_stack(tiny_llama, tmp_path):
    path = tiny_llama[1]
    cpu_dev = torch.device("cpu")
    base = stack_key(model_key(path), cpu_dev, torch.float32, [1, 2, 4], 64, 16)
    assert base == stack_key(model_key(path), cpu_dev, torch.float32, [4, 2, 1], 64, 16)
    others = {stack_key(model_key(path), cpu_dev, torch.bfloat16, [1, 2, 4], 64, 16),
              stack_key(model_key(path), cpu_dev, torch.float32, [1, 2, 4, 8], 64, 16),
              stack_key(model_key(path), cpu_dev, torch.float32, [1, 2, 4], 128, 16),
              stack_key(model_key(path), cpu_dev, torch.float32, [1, 2, 4], 64, 8),
              stack_key(model_key(path, "dummy"), cpu_dev, torch.float32, [1, 2, 4], 64, 16)}
    assert base not in others and len(others) == 5
    weights = next(f for f in sorted(path.iterdir()) if f.suffix == ".safetensors")
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # new weights, same name
    assert stack_key(model_key(path), cpu_dev, torch.float32, [1, 2, 4], 64, 16) != base


def test_a_torn_record_is_ignored(tmp_path, caplog):
    (tmp_path / "k.json").write_text('{"good": [1, 2')
    assert capture_record.load(tmp_path, "k") is None
    assert "ignoring the capture record k" in caplog.text
    capture_record.save(tmp_path, "k", CaptureRecord([1, 2], None, 0.5))
    assert capture_record.load(tmp_path, "k") == CaptureRecord([1, 2], None, 0.5)
