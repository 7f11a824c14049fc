"""Reads a finished run in a process of its own, as a training job would,
for test_resume.py: python resume_child.py JOB_JSON, prints a JSON list
with a RESULT per run of the job.

JOB: output_dir; reader 'numpy' or 'torch'; shuffle, seed; for torch
world_size, rank, num_workers, and `loader` options (persistent_workers,
multiprocessing_context); runs, each with resume: a state to load first, or
null; passes: how many passes (numpy: epochs) to read; stop_after: stop
after this many batches (absent: never). Every run has readers of its own,
made in this process: none saw the state it resumes being saved.

RESULT: passes, the batches read in each pass (each batch as its example
ids joined by ','); states, the state saved after each batch, as
[pass, batches read in that pass, state]; pass_end_states, the state saved
after each pass ended.
"""

import json
import sys
import warnings

from sftbeam.readers import iter_numpy_batches, torch_dataset


def batch_key(batch) -> str:
  return ','.join(batch['example_ids'])


def numpy_passes(job, run):
  """Each pass is an epoch's iterator, starting from the saved epoch and
  position if resuming; each says where it is (state_dict)."""
  state = run['resume']
  epoch = state['epoch'] if state else 0
  for epoch in range(epoch, epoch + run['passes']):
    batches = iter_numpy_batches(job['output_dir'], shuffle=job['shuffle'],
                                 seed=job['seed'], epoch=epoch)
    if state:
      batches.load_state_dict(state)
      state = None
    yield batches


def torch_passes(job, run):
  """Each pass is one iteration of the same StatefulDataLoader, which says
  where it is (state_dict)."""
  # pylint: disable=import-outside-toplevel
  from torchdata.stateful_dataloader import StatefulDataLoader
  dataset = torch_dataset(job['output_dir'], shuffle=job['shuffle'],
                          seed=job['seed'], rank=job['rank'],
                          world_size=job['world_size'])
  loader = StatefulDataLoader(dataset, batch_size=None,
                              num_workers=job['num_workers'],
                              **job.get('loader', {}))
  if run['resume']:
    loader.load_state_dict(run['resume'])
  for _ in range(run['passes']):
    yield loader


def read(passes, stop_after=None) -> dict:
  """The RESULT of reading `passes` (module docstring)."""
  result = {'passes': [], 'states': [], 'pass_end_states': []}
  read_so_far = 0
  for index, batches in enumerate(passes):
    result['passes'].append([])
    for batch in batches:
      result['passes'][-1].append(batch_key(batch))
      result['states'].append([index, len(result['passes'][-1]),
                               batches.state_dict()])
      read_so_far += 1
      if read_so_far == stop_after:
        return result
    result['pass_end_states'].append(batches.state_dict())
  return result


def main():
  job = json.loads(sys.argv[1])
  # torchdata 0.11 calls a torch function that torch 2.13 deprecates.
  warnings.filterwarnings('ignore', message="'set_vital' is deprecated")
  passes = numpy_passes if job['reader'] == 'numpy' else torch_passes
  print(json.dumps([read(passes(job, run), run.get('stop_after'))
                    for run in job['runs']]))


if __name__ == '__main__':
  main()
