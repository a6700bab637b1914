"""Evaluation: the unified evaluator (run.py), reply scoring, lm-evaluation-harness, the base-result cache and the
comparison report."""
