"""The CEL environment and decider's functions beyond standard CEL."""
