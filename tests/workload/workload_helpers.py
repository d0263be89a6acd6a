"""Tiny configs and fast options shared by the workload tests (a uniquely named module: no test folder is a package)."""

from __future__ import annotations

from ziplm_deploy.core.workload import Workload
from ziplm_deploy.profiling.profiler import ProfileOptions
from ziplm_deploy.runtime.timing import Protocol

TINY_LLAMA = dict(model_type="llama", num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, vocab_size=100)
FAST = Protocol(warmup=1, rounds=3, recheck=2)
OPTS = ProfileOptions(ffn_step=32, protocol=FAST)
WORKLOAD = Workload(8, 5)  # decode steps at KV 8, 9, 10, 11
