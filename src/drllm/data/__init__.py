"""Benchmark records: the Example schema, packaged and hub sources, row mappers, benchmarks declared by
config (rules/assets.smk), and the benchmark entries evaluation and calibration sample from."""
