"""Training: the workflow (run.py), a run's life and records, experiment logs, rewards, and one module per method
(methods/)."""
