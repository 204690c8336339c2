"""Evaluation and report (rules/eval.smk, rules/report.smk): evaluation cells, baselines, lm-eval,
metrics and intervals, tables and plots."""
