"""Recorded agent traces through a bundle (replay, diff) and the readers of trace formats."""
