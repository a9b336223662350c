"""Retention and archives (SPEC §11): decisions past a horizon go to verified archive files, then
leave the database; `decider log --archive` and `decider replay` read those files back."""
