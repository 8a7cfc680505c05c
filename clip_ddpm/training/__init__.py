"""The machinery both trainers share: flags, workdir, mesh, train state, loop, checkpoints, logs."""
