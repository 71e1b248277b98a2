"""A learner's Run All: the fast notebooks, top to bottom in full mode, offline, on the sample.

nbval (the `notebooks/` and `solutions/` test items) runs every notebook in quick mode: the
same code at smaller sizes. That cannot catch a cell that breaks only at full size, such as an
assert that holds on WikiText-2 but not on the built-in sample corpus a fresh, offline machine
falls back to. This test runs the notebooks (and solutions) that take under about a
minute in full mode exactly as such a learner would: no WIKIGPT_QUICK, no WIKIGPT_DATA_DIR,
no tiktoken files, the Hugging Face hub offline. The others (notebooks 04-09 and solutions 05-09, which train for
minutes) are run in full by `tools/run_notebooks.py --sample` before their outputs are
committed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
# Full-mode run times on the sample corpus, 2-core CPU, one thread (tools/run_notebooks.py
# --sample; benchmarks/results/notebook_times.jsonl): 5 to 32 s each.
FAST = [
    "notebooks/01_tokenization.ipynb",
    "notebooks/02_wikitext2.ipynb",
    "notebooks/03_attention.ipynb",
    "solutions/01_tokenization_solutions.ipynb",
    "solutions/02_wikitext2_solutions.ipynb",
    "solutions/03_attention_solutions.ipynb",
    "solutions/04_gpt_solutions.ipynb",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_runs_in_full_mode_offline_on_the_sample_corpus(name, monkeypatch, tmp_path):
    # run_notebooks --sample's own environment (no quick mode, no data, hub offline), plus an
    # empty cache and one thread, so the test does not depend on this machine's state
    monkeypatch.setenv("WIKIGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # a failing cell raises CellExecutionError with its traceback
    nb, _, _ = load_tool("run_notebooks").execute(ROOT / name, timeout=300, sample=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "sample" in printed.lower(), "the notebook did not say it fell back to the sample"
