"""Policy unit tests (`decider test`): suites, cases, coverage."""
