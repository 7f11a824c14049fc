"""The contenders of benchmarks/run_benchmark.py, one module each.

A module's docstring says what it runs and what is timed. Python contenders
give `work(input_path, out_dir, tokenizer_dir)`, run in a child process by
the harness, returning their counts and timed seconds; the sftbeam and
datasets contenders also give `run(...)`, which starts and measures that
child from the parent (benchmarks/measure.py).
"""
