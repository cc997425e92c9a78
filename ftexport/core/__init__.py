"""Leaves every stage builds on and that import no stage: errors, progress, artifacts (stage
folders, records, keys), hf (model and tokenizer loading), machine, timing, tables, gates."""
