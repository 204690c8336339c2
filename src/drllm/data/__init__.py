"""Benchmark records: the Example schema, packaged and hub sources, row mappers, and benchmarks declared by
config (rules/assets.smk)."""
