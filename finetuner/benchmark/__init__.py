"""Benchmark: answer held-out prompts with each model, score (ROUGE, exact match, a judge), compare, save.

The held-out rows (OUT/heldout.jsonl) were never trained on. Every model answers the same
prompts, as the same token ids training put before each response (`render_prompt`, then
`data.encode_prompt`), with greedy decoding, so only the model differs between rows of the table.

- answers.py     greedy answers to the held-out prompts, with decoding throughput
- scores.py      ROUGE and loops (pure, on text); perplexity and top-1 agreement (teacher-forced)
- task.py        task accuracy: exact match of final answers, strict and flexible (final_answer.py)
- rubric.py      the judge's rubric and how its reply is read (pure)
- judge.py       an OpenAI-compatible judge grades every answer 1-5, cached and resumable
- cost.py        what a model costs to run: decoding speed, peak memory, size on disk
- speed.py       every model's decoding speed, timed alternately, best of several
- speculative.py the student as its teacher's speculative draft: speed-up and acceptance
- measure.py     one model measured: `evaluate` -> ModelResult
- comparison.py  the report (benchmark.json): `compare`, `save`, `load`
- uncertainty.py 95% intervals (Wilson, normal) and whether one settles a target
- checks.py      the verdict's checks, each with its uncertainty
- verdict.py     the report's acceptance checks and notes: did it pay?
- tables.py      the report as tables, on the terminal and in the model card
- progress.py    a bar per stage while the benchmark runs
- rescore.py     a finished benchmark scored and judged again from its saved answers
- run.py         the stage: every model of a run, measured, compared, shown and saved
"""
