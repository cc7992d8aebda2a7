"""Everything Lightning calls back during a run."""
