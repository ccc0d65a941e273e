"""Training images: the gpu/cpu Dockerfiles, building, registry login and push, the pushed-digest
record, and the Docker runtime that runs a job's entry point in a container."""
