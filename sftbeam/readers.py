"""Reading a finished sftbeam output directory (see sftbeam.pipeline.readers).

  from sftbeam.readers import iter_numpy_batches, torch_dataset, read_tf_dataset

None of these imports TensorFlow or torch: `read_tf_dataset` imports
TensorFlow when called (extra `sftbeam[tf]`), `torch_dataset` torch (extra
`sftbeam[torch]`).
"""

from sftbeam.pipeline.read_order import IncompatibleState
from sftbeam.pipeline.readers import (CorruptOutput, IncompleteOutput,
                                      iter_numpy_batches, load_dataset_info,
                                      read_tf_dataset, torch_dataset)
from sftbeam.transforms.pack import cu_seqlens

__all__ = ['CorruptOutput', 'IncompatibleState', 'IncompleteOutput',
           'cu_seqlens', 'iter_numpy_batches', 'load_dataset_info',
           'read_tf_dataset', 'torch_dataset']
