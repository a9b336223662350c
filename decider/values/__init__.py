"""What a request's values are, below the engine and the record that both use them: their canonical
JSON and keyed binding hash (canonical.py) and their masking (masking.py)."""
