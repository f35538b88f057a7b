"""The typed library behind the ``still`` commands: generators over JSONL records."""
