"""The offline, length-aware MCTS (rules/search.smk): the search as plain data, rewards along a path,
workers and backends, prompt sets, shards and the search summary."""
