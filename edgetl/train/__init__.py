"""Training, the same pipeline for both tasks: `classify` and `detect` supply data, model and loss to the
shared core (`engine`: seeding, device, schedule, EMA, checkpoints, resume, data-parallel runs). Imports torch."""
