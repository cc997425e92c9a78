"""Judging stages: one parity engine (parity.py) and one latency engine (bench.py) for every
task, runners per backend (runners.py), cold start in a fresh process (coldstart.py) and the
HTML report (html.py). The task supplies what to compare; the engines never ask its name."""
