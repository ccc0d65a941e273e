"""The bottom layer of faceops: errors, configuration, storage, the container contract, the task
registry, code bundles and small shared helpers. It imports nothing else of faceops, so every
other package (images, train, inference, jobs orchestration, the CLI) may import it."""
