"""Decision records: the typed record, argument masking, time-sortable ids."""
