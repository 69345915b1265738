"""The stages every file goes through, whichever way it came in: hash it, settle it (a known
result, a twin in the batch, a permanent or transient failure), screen it, commit it."""
