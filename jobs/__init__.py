"""Thin command-line jobs: parse arguments, load config, build the session, call shardlake."""
