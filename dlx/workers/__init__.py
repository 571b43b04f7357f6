"""Worker processes: the engine leader loop per data-parallel group, its tensor-parallel followers,
the pool that starts them and the supervisor that restarts a pool whose worker died."""
