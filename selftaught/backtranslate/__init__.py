"""Instruction backtranslation (Humpback): seed, segment, augment, curate, select, train."""
