"""shardlake: hash-sharded Delta tables, Petastorm + Horovod training and MapReduce-style inference on Spark."""
from setuptools import find_packages, setup

setup(
    name="shardlake",
    version="0.1.0",
    description="Spark-based ML platform: Delta ingest, Petastorm/Horovod training, batch inference",
    python_requires=">=3.11,<3.12",
    package_dir={"": "libs", "jobs": "jobs"},
    packages=find_packages("libs") + ["jobs"],
    package_data={"shardlake": ["py.typed"]},
    # Runtime pins live in requirements.txt (exact, verified together); horovod is built from source
    # by scripts/build_horovod.sh and petastorm is installed --no-deps (see README "Why these pins").
    install_requires=[],
    entry_points={
        "console_scripts": [
            "shardlake-ingest=jobs.ingest:main",
            "shardlake-train=jobs.train:main",
            "shardlake-infer=jobs.infer:main",
            "shardlake-pipeline=jobs.pipeline:main",
            "shardlake-promote=jobs.promote:main",
            "shardlake-generate=jobs.generate:main",
            "shardlake-submit=jobs.submit:main",
        ]
    },
)
