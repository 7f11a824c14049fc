"""transforms/records.py: the values between steps."""

import json

from sftbeam.transforms.records import Rejected


def test_rejected_to_json_keeps_reason_and_source():
  rejected = Rejected('f.jsonl', 3, 'invalid_json', 'boom', '{')
  assert json.loads(rejected.to_json()) == {
      'source': 'f.jsonl', 'line_number': 3, 'reason': 'invalid_json',
      'message': 'boom', 'raw': '{'}
