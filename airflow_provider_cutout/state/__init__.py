"""What lives in an output folder: whole writes and listings, claims, the manifest log, and the
single edit's records."""
