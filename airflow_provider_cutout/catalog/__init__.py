"""What a batch means: its configuration, its plan (items, fingerprints, file names, what to do with
each), one run of it, and the review gallery."""
