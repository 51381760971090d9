"""The wizard: from answers (a file, `--set`, a previous run, the terminal) to one RunConfig.

questions.py   the questions as data (wording, kind, choices, when each applies)
answers.py     the answers-file dump/load pair that makes every run replayable
resolve.py     the one loop that types, validates and, on a terminal, asks for every answer
prompts.py     a question asked at the terminal (through ui's prompts)
gather.py      the command line's answers and checks in, a RunConfig out
"""
