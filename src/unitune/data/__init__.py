"""Data: load a split, map its columns, detect its format, make it canonical, drop unusable rows and convert it for a
method (pipeline.py is the one entry); token lengths; `unitune check`."""
