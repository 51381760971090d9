"""Benchmark: answer held-out prompts with each model, score with ROUGE, compare, save.

The held-out rows (OUT/heldout.jsonl) were never trained on. Every model answers the same
prompts, as the same token ids training put before each response (`render_prompt`, then
`data.encode_prompt`), with greedy decoding, so only the model differs between rows of the table.

- answers.py     greedy answers to the held-out prompts, with decoding throughput
- scores.py      ROUGE and loops (pure, on text); perplexity and top-1 agreement (teacher-forced)
- cost.py        what a model costs to run: decoding speed, peak memory, size on disk
- measure.py     one model measured: `evaluate` -> ModelResult
- comparison.py  the report (benchmark.json): `compare`, `save`, `load`
- verdict.py     the report's acceptance checks: did it pay?
- tables.py      the report as tables, on the terminal and in the model card
- run.py         the stage: every model of a run, measured, compared, shown and saved
"""
