"""The device runtime: bundle + backend + pre/post-processing. Never imports torch."""
