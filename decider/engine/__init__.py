"""The pure decision: a compiled bundle, a request and a state snapshot in; a decision and its effects out."""
