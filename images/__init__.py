"""Training images: the gpu/cpu Dockerfiles and the scripts they carry, the engine client,
building, registry login and push, and the pushed-digest record. Running a job's entry point in a
container is the local backend's docker runtime (jobs.backends.runtimes)."""
