"""What a command prints besides its results: progress bars that suit a log file, the datasets library's bars only
for long preparations."""


def test_a_bar_in_a_log_file_prints_whole_lines(capsys):
    """stderr is not a terminal here, as in a log file: each refresh is its own line, no carriage returns."""
    from unitune.console import bar

    progress = bar(total=3, desc="training", unit="step", mininterval=0, delay=0)
    for _ in range(3):
        progress.update(1)
    progress.close()
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    assert all(line.startswith("training: ") for line in err.splitlines())
    assert "3/3" in err.splitlines()[-1]


def test_dataset_bars_only_for_long_preparations(monkeypatch):
    import datasets

    from unitune import console as output

    monkeypatch.setattr(output, "_quiet", True)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with output.dataset_bars(output.LONG_DATA_ROWS - 1):
            assert datasets.are_progress_bars_disabled()
        with output.dataset_bars(output.LONG_DATA_ROWS):
            assert not datasets.are_progress_bars_disabled()
        assert datasets.are_progress_bars_disabled()
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
