"""Reading a finished sftbeam output directory (see sftbeam.pipeline.readers).

  from sftbeam.readers import iter_numpy_batches, read_tf_dataset
"""

from sftbeam.pipeline.readers import (IncompleteOutput, iter_numpy_batches,
                                      load_dataset_info, read_tf_dataset)

__all__ = ['IncompleteOutput', 'iter_numpy_batches', 'load_dataset_info',
           'read_tf_dataset']
