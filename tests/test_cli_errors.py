"""Every config and CLI error stops the run before it starts: exit 2, exactly
one line on stderr saying what is wrong, no traceback (docs/options.md).

Most cases call `sftbeam.pipeline.cli.main` in-process (no pipeline runs); two go
through the installed `sftbeam` script, offline.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import SFTBEAM, offline, run_sftbeam, shared_data
from sftbeam.pipeline import cli
from sftbeam.transforms.tokenizer_source import embedded_tokenizer_dir

# (case id, YAML config text or None, argv after `run`, part of the message).
# {input}, {output}, {config} and {tmp} are filled in per test.
CASES = [
    ('unknown-yaml-key', 'batchsize: 3\n', [], 'unknown option "batchsize"'),
    ('wrong-type-yaml', 'batch_size: "32"\n', [],
     'batch_size must be an integer'),
    ('wrong-type-yaml-list', 'boundaries: 32\n', [],
     'boundaries must be a list of integers'),
    ('unsorted-boundaries-yaml', 'boundaries: [64, 32]\n', [],
     'strictly increasing'),
    ('non-positive-batch-size-yaml', 'batch_size: 0\n', [],
     'batch_size must be a positive integer'),
    ('bad-truncation-yaml', 'truncation: middle\n', [],
     'truncation must be one of none, output_right, prompt_left'),
    ('bad-yaml-syntax', 'batch_size: [\n', [], 'is not valid YAML'),
    ('yaml-not-a-mapping', '- batch_size\n', [], 'must hold a mapping'),
    ('yaml-beam-not-a-mapping', 'beam: fast\n', [],
     '"beam" must be a mapping'),
    ('missing-config-file', None, ['--config', '{tmp}/nope.yaml'],
     'cannot read config'),
    ('unknown-flag', None, ['--frobnicate', '3'],
     'unknown flag --frobnicate: not an sftbeam option (see sftbeam run '
     '--help) nor a Beam pipeline option'),
    # An unknown flag or key names the option it most likely misspells.
    ('misspelled-flag', None, ['--batchsize', '3'],
     'unknown flag --batchsize: not an sftbeam option (see sftbeam run '
     '--help) nor a Beam pipeline option; did you mean --batch_size?'),
    ('misspelled-flag-plural', None, ['--boundary', '16,32'],
     'did you mean --boundaries?'),
    ('hyphenated-flag', None, ['--batch-size', '3'],
     'unknown flag --batch-size: not an sftbeam option (see sftbeam run '
     '--help) nor a Beam pipeline option; did you mean --batch_size?'),
    ('misspelled-beam-flag', None, ['--runer', 'DataflowRunner'],
     'did you mean --runner?'),
    ('misspelled-yaml-key', 'prompt-field: q\n', [],
     'unknown option "prompt-field" (did you mean prompt_field?); known '
     'options: input,'),
    ('stray-argument', None, ['stray'], "unexpected argument 'stray'"),
    ('wrong-type-cli-int', None, ['--batch_size', 'many'],
     "--batch_size: cannot read 'many'"),
    ('wrong-type-cli-bool', None, ['--overwrite', 'maybe'],
     "--overwrite: cannot read 'maybe'"),
    ('wrong-type-cli-float', None, ['--max_rejected_fraction', 'lots'],
     "--max_rejected_fraction: cannot read 'lots'"),
    ('wrong-type-cli-ints', None, ['--boundaries', '32,big'],
     "--boundaries: cannot read '32,big'"),
    ('unsorted-boundaries-cli', None, ['--boundaries', '64,32'],
     'strictly increasing'),
    ('repeated-boundary-cli', None, ['--boundaries', '32,32'],
     'strictly increasing'),
    ('zero-batch-size', None, ['--batch_size', '0'],
     'batch_size must be a positive integer'),
    ('negative-batch-size', None, ['--batch_size', '-3'],
     'batch_size must be a positive integer'),
    ('batch-size-and-batch-tokens', None, ['--batch_size', '8',
                                           '--batch_tokens', '4096'],
     'batch_size and batch_tokens both set'),
    ('bad-tokenizer-backend', None, ['--tokenizer_backend', 'fast'],
     'tokenizer_backend must be one of auto, fastokens, hf'),
    ('bad-batching', None, ['--batching', 'everywhere'],
     'batching must be one of bundle, global'),
    ('global-batching-with-packed-layout', 'batching: global\n',
     ['--layout', 'packed'],
     'batching global applies to the padded layout only'),
    ('bad-truncation-cli', None, ['--truncation', 'middle'],
     'truncation must be one of'),
    ('bad-special-tokens-in-text', None, ['--special_tokens_in_text', 'yes'],
     'special_tokens_in_text must be one of special, text'),
    ('bad-pad-to', None, ['--pad_to', 'max'], 'pad_to must be one of'),
    ('max-seq-len-above-boundaries', None, ['--max_seq_len', '99999'],
     'above the largest bucket boundary'),
    ('max-rejected-fraction-above-1', None, ['--max_rejected_fraction', '1.5'],
     'max_rejected_fraction must be between 0 and 1'),
    ('bad-beam-option-value', None, ['--max_num_workers=many'],
     'invalid int value'),
    ('missing-input', None, ['--input', '{tmp}/missing.jsonl'],
     'matches no file'),
    ('tokenizer-dir-missing', None, ['--tokenizer', '{tmp}/no-tokenizer'],
     'tokenizer directory {tmp}/no-tokenizer does not exist'),
    ('tokenizer-dir-without-files', None, ['--tokenizer', '{tmp}'],
     'cannot load tokenizer'),
    ('output-not-empty', None, ['--output', '{tmp}/full'],
     'is not empty (1 entries): pass --overwrite'),
    ('output-is-a-file', None, ['--output', '{input}'],
     'is a file, not a directory'),
    # Values at the edge of a check, or that could break the one line.
    ('pad-id-outside-vocabulary', None, ['--pad_id', '999999999'],
     "pad_id 999999999 is not a token id of tokenizer 'embedded' (its ids "
     'are 0 to 151668)'),
    ('pad-id-over-int32', None, ['--pad_id', str(2**32)],
     'pad_id must be a token id, from 0 to 2147483647; got 4294967296'),
    ('pad-id-over-int64', 'pad_id: 9223372036854775808\n', [],
     'pad_id must be a token id, from 0 to 2147483647'),
    ('negative-pad-id', None, ['--pad_id', '-1'],
     'pad_id must be a token id'),
    ('input-is-a-directory', None, ['--input', '{tmp}/full'],
     'full is a directory; pass its files, e.g. --input "{tmp}/full/*.jsonl"'),
    ('input-directory-with-slash', None, ['--input', '{tmp}/full/'],
     'full is a directory; pass its files, e.g. --input "{tmp}/full/*.jsonl"'),
    ('gs-input-directory-with-slash', None,
     ['--input', 'gs://my-bucket/data/'],
     'gs://my-bucket/data is a directory; pass its files'),
    ('gs-output-with-glob-characters', None,
     ['--output', 'gs://my-bucket/run[1]'],
     'output must be a local directory, or a remote one without [ * ? in its '
     'path'),
    ('yaml-alias-bomb', 'boundaries:\n' + ''.join(
        f'  - &a{level} [{", ".join([f"*a{level - 1}"] * 9)}]\n'
        if level else '  - &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]\n'
        for level in range(9)), [],
     'holds more than 100000 values (counting what its YAML aliases repeat)'),
    ('yaml-alias-cycle', 'boundaries: &loop [*loop]\n', [],
     'holds more than 100000 values'),
    ('long-value-cut', f'truncation: {"x" * 100000}\n', [],
     "truncation must be one of none, output_right, prompt_left; got 'xxx"),
    ('long-list-cut', f'boundaries: {list(range(50000, 0, -1))}\n', [],
     'boundaries must be a non-empty, strictly increasing list of positive '
     'integers up to 1048576; got [50000, 49999,'),
    # Bounded work for bounded input: refused before anything is allocated.
    ('pack-length-over-max', None, ['--layout', 'packed', '--pack_length',
                                    str(2**31 - 1)],
     'pack_length must be a positive integer up to 1048576; got 2147483647'),
    ('boundary-over-max', None, ['--boundaries', f'16,{2**31 - 1}'],
     'boundaries must be a non-empty, strictly increasing list of positive '
     'integers up to 1048576'),
    ('megabyte-field-name', None, ['--prompt_field', 'p' * 2**20],
     'prompt_field must be at most 4096 characters; got 1048576'),
    ('long-input-pattern', None, ['--input', 'x' * 5000],
     'input must be at most 4096 characters; got 5000'),
    # Google Cloud names are checked offline by their rules: Beam, given
    # names Google Cloud refuses, retries credentials and DNS for minutes.
    ('placeholder-bucket-input', None, ['--input', 'gs://BUCKET/data/*.jsonl'],
     'input must be local or gs:// patterns (a gs:// bucket name is 3-63 '
     'lowercase letters, digits, "-", "_" or "."); got '
     "['gs://BUCKET/data/*.jsonl']"),
    ('short-bucket-output', None, ['--output', 'gs://ab/run1'],
     '(a gs:// bucket name is 3-63 lowercase letters, digits, "-", "_" or '
     '"."); got \'gs://ab/run1\''),
    ('google-bucket-tokenizer', None, ['--tokenizer', 'gs://my-google-x/tok'],
     'tokenizer must be a hub name, or a local or gs:// directory'),
    ('pubsub-project-too-short', None, [
        '--streaming', '--input_subscription', 'projects/abc/subscriptions/s1'],
     'input_subscription must be projects/P/subscriptions/NAME, P a project '
     'id (6-30 lowercase letters, digits or "-", from a letter)'),
    ('pubsub-placeholder-project', None, [
        '--streaming', '--input_topic', 'projects/PROJECT/topics/records'],
     'input_topic must be projects/P/topics/NAME'),
    ('pubsub-name-too-short', None, [
        '--dead_letter_topic', 'projects/my-project/topics/t'],
     'dead_letter_topic must be projects/P/topics/NAME'),
    ('dataflow-placeholder-project', None, [
        '--runner', 'DataflowRunner', '--project', 'PROJECT', '--region',
        'us-central1', '--temp_location', 'gs://my-bucket/tmp'],
     '--project PROJECT: project id "PROJECT" is not a Google Cloud project '
     'id (6-30 lowercase letters, digits or "-", from a letter)'),
    ('dataflow-placeholder-temp-bucket', None, [
        '--runner', 'DataflowRunner', '--project', 'my-project',
        '--temp_location', 'gs://BUCKET/sftbeam/tmp'],
     '--temp_location gs://BUCKET/sftbeam/tmp: bucket name "BUCKET" is not a '
     'Cloud Storage bucket name'),
    ('dataflow-ip-staging-bucket', None, [
        '--runner', 'DataflowRunner', '--project', 'my-project',
        '--temp_location', 'gs://my-bucket/tmp', '--staging_location',
        'gs://192.168.1.1/s'],
     'bucket name "192.168.1.1" is not a Cloud Storage bucket name'),
]


@pytest.fixture
def paths(tmp_path):
  """{input}, {output}, {config} and {tmp} of one test."""
  input_path = tmp_path / 'in.jsonl'
  input_path.write_text('{"prompt": "a", "output": "b"}\n', encoding='utf-8')
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'earlier.txt').write_text('x', encoding='utf-8')
  return {'input': str(input_path), 'output': str(tmp_path / 'out'),
          'config': str(tmp_path / 'config.yaml'), 'tmp': str(tmp_path)}


def command_line(yaml_text, argv, paths):
  """`run --input .. --output ..` + argv; a later flag overrides."""
  args = ['run', '--input', '{input}', '--output', '{output}']
  if yaml_text is not None:
    with open(paths['config'], 'w', encoding='utf-8') as handle:
      handle.write(yaml_text)
    args += ['--config', '{config}']
  return [arg.format(**paths) for arg in args + argv]


def assert_one_line_error(code, stdout, stderr, message):
  assert code == 2
  assert 'Traceback' not in stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr
  assert lines[0].startswith('sftbeam: error: ')
  assert message in lines[0]
  assert len(lines[0]) < 700  # values are cut, with a mark
  assert not stdout


@pytest.mark.parametrize('yaml_text, argv, message',
                         [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_config_error_exits_2_with_one_line(yaml_text, argv, message, paths,
                                            capsys):
  code = cli.main(command_line(yaml_text, argv, paths))
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err,
                        message.format(**paths))
  assert not os.path.exists(paths['output'])  # nothing ran


def test_append_eos_needs_an_eos_token(paths, capsys):
  """Not silently nothing appended (the library raises too)."""
  directory = os.path.join(paths['tmp'], 'no-eos')
  shutil.copytree(embedded_tokenizer_dir(), directory)
  config_path = os.path.join(directory, 'tokenizer_config.json')
  with open(config_path, encoding='utf-8') as handle:
    tokenizer_config = json.load(handle)
  tokenizer_config['eos_token'] = None
  with open(config_path, 'w', encoding='utf-8') as handle:
    json.dump(tokenizer_config, handle)
  code = cli.main(command_line(
      None, ['--tokenizer', directory, '--append_eos'], paths))
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err,
                        f"append_eos: the tokenizer '{directory}' has no "
                        'eos_token_id')


@pytest.mark.parametrize('argv, message', [
    (['run', '--output', 'out'], 'no input: pass --input'),
    (['run', '--input', 'in.jsonl'], 'no output directory: pass --output'),
    (['build'], "invalid choice: 'build'"),
    ([], 'the following arguments are required: command'),
])
def test_incomplete_command_exits_2_with_one_line(argv, message, capsys):
  code = cli.main(argv)
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err, message)


def test_hub_tokenizer_not_found_offline(paths, capsys, monkeypatch):
  """A hub name that is not cached, with the hub unreachable (offline mode
  here, so the test never waits for network retries)."""
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  code = cli.main(command_line(
      None, ['--tokenizer', 'no-such-org/no-such-tokenizer'], paths))
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err,
                        "cannot load tokenizer 'no-such-org/no-such-tokenizer'")


def test_installed_script_exits_2_with_one_line(paths):
  """The real console script, with a config file, up to the last check."""
  paths['output'] = os.path.join(paths['tmp'], 'full')
  yaml_text = 'batch_size: 8\n'
  message = f'output directory {paths["output"]} is not empty'
  result = run_sftbeam(*command_line(yaml_text, [], paths), network=False)
  assert_one_line_error(result.returncode, result.stdout, result.stderr,
                        message)


def interrupted(command, when_ready, timeout=300):
  """(exit code, stdout, stderr) of `command` sent SIGINT (Ctrl-C) as soon
  as `when_ready()` holds."""
  process = subprocess.Popen(offline(command), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + timeout
  while not when_ready() and process.poll() is None:
    assert time.monotonic() < deadline, 'never ready'
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=timeout)
  return process.returncode, stdout, stderr


@pytest.mark.slow
@pytest.mark.parametrize('moment', ['starting', 'running'])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, moment):
  """While the command loads its libraries, and in the middle of a run
  (Beam re-raises the interrupt inside a step as a RuntimeError)."""
  data = shared_data('alpaca_5000.jsonl')
  output = tmp_path / 'out'
  started = time.monotonic()
  # At 1 s the command is importing Beam and transformers (2 s or more).
  ready = {'starting': lambda: time.monotonic() > started + 1,
           'running': lambda: (output / '.sftbeam-manifest.json').exists()}
  code, stdout, stderr = interrupted(
      [SFTBEAM, 'run', '--input', *[data] * 8, '--output', str(output)],
      ready[moment])
  assert (code, stdout, stderr) == (
      130, '', 'sftbeam: error: interrupted (Ctrl-C)\n')


def test_ctrl_c_in_stats_and_inspect_is_one_line(capsys, monkeypatch):
  def interrupt(*unused_args):
    raise KeyboardInterrupt
  monkeypatch.setattr('sftbeam.pipeline.readers.load_dataset_info', interrupt)
  for command in (['stats', 'out'], ['inspect', 'out', '--id', 'x']):
    assert cli.main(command) == 130
    captured = capsys.readouterr()
    assert captured.err == 'sftbeam: error: interrupted (Ctrl-C)\n'
