"""A signal during training: the same stop delivered twice is one stop; a second stop exits at once."""


def test_a_second_signal_exits_at_once_but_a_duplicate_does_not(monkeypatch):
    """SLURM signals every process of a step and torchrun forwards the signal again: the same stop, delivered
    twice within a few seconds, must not cut the checkpoint short; a later second signal exits at once."""
    import signal

    from unitune.train import lifecycle

    clock, exits = [100.0], []
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lifecycle.os, "_exit", exits.append)
    stop = lifecycle.GracefulStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.signal == signal.SIGTERM and exits == []
    clock[0] += 0.5
    stop._handle(signal.SIGTERM, None)  # the duplicate
    assert exits == []
    clock[0] += 10
    stop._handle(signal.SIGINT, None)  # the user insists
    assert exits == [130]
