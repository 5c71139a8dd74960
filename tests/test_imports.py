"""The API server process stays free of torch (its import is most of a cold start's CPU time)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import needs_default_model

API_SIDE = """
import sys
import kairos, kairos.cli, kairos.server.app, kairos.server.launch, kairos.loader.tokenizer, kairos.loader.default
from kairos.config import EngineConfig
EngineConfig()  # validation (the policy registry) included
kairos.cli.build_parser()
heavy = sorted(m for m in ("torch", "transformers", "safetensors", "gguf") if m in sys.modules)
print(",".join(heavy))
"""


def test_api_process_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", API_SIDE], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_lazy_package_exports_resolve():
    import kairos
    import kairos.loader

    assert kairos.SamplingParams.__name__ == "SamplingParams"
    assert callable(kairos.loader.resolve_model_path) and callable(kairos.loader.load_model)
    with pytest.raises(AttributeError, match="nope"):
        kairos.loader.nope  # noqa: B018


@needs_default_model
def test_cached_gguf_tokenizer_loads_without_torch():
    from kairos.loader import load_tokenizer, resolve_model_path

    load_tokenizer(resolve_model_path("default"))  # converts and caches on a new machine (that imports torch)
    code = ("import sys\nfrom kairos.loader import load_tokenizer, resolve_model_path\n"
            "tok = load_tokenizer(resolve_model_path('default'))\n"
            "print(len(tok('Hello there').input_ids), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split()[-1] == "False"
