"""Google's Pub/Sub emulator on 127.0.0.1, for the streaming tests.

  with PubSubEmulator(work_dir) as emulator:   # starts it, waits for it
    emulator.env                # {'PUBSUB_EMULATOR_HOST': '127.0.0.1:PORT'}
    topic, subscription = emulator.create('records')

It runs `gcloud beta emulators pubsub start` in a process group of its own
and stops that group by its id. `missing()` says why it cannot run here.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time

PROJECT = 'sftbeam-test'
INSTALL_HINT = ('install it with: apt-get install google-cloud-cli '
                'google-cloud-cli-pubsub-emulator openjdk-17-jre-headless '
                '(scripts/test.sh does this when it can)')
_START_SECONDS = 120


def _sdk_root():
  gcloud = shutil.which('gcloud')
  if not gcloud:
    return None
  return os.path.dirname(os.path.dirname(os.path.realpath(gcloud)))


def missing():
  """Why the emulator cannot run here (with how to install it), or None."""
  root = _sdk_root()
  if root is None:
    return f'gcloud is not installed; {INSTALL_HINT}'
  if not os.path.isdir(os.path.join(root, 'platform', 'pubsub-emulator')):
    return f'the Pub/Sub emulator is not installed; {INSTALL_HINT}'
  if not shutil.which('java'):
    return f'java is not installed; {INSTALL_HINT}'
  return None


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


class PubSubEmulator:
  """A running emulator: its env, clients and topic/subscription helpers."""

  def __init__(self, work_dir: str):
    self._work_dir = work_dir
    self._process = None
    self._log = None
    self.host = f'127.0.0.1:{_free_port()}'
    self.env = {'PUBSUB_EMULATOR_HOST': self.host}
    self.publisher = None
    self.subscriber = None

  def __enter__(self):
    os.makedirs(os.path.join(self._work_dir, 'data'), exist_ok=True)
    self._log = open(os.path.join(self._work_dir, 'emulator.log'), 'wb')
    env = dict(os.environ,
               CLOUDSDK_CONFIG=os.path.join(self._work_dir, 'gcloud'),
               CLOUDSDK_CORE_DISABLE_USAGE_REPORTING='true',
               CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK='true')
    self._process = subprocess.Popen(
        ['gcloud', 'beta', 'emulators', 'pubsub', 'start',
         f'--host-port={self.host}', f'--project={PROJECT}',
         f'--data-dir={os.path.join(self._work_dir, "data")}'],
        stdout=self._log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True)
    try:
      self._connect()
    except BaseException:
      self.stop()
      raise
    return self

  def __exit__(self, *unused_exc_info):
    self.stop()

  def _connect(self):
    """Waits until the emulator answers, then makes the clients."""
    deadline = time.time() + _START_SECONDS
    host, port = self.host.split(':')
    while True:
      if self._process.poll() is not None:
        raise RuntimeError(f'the Pub/Sub emulator exited: {self.log()}')
      try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
      except OSError:
        if time.time() > deadline:
          raise RuntimeError(f'the Pub/Sub emulator did not answer within '
                             f'{_START_SECONDS} s: {self.log()}') from None
        time.sleep(0.5)
    # The clients read the variable when they are made.
    with _environ(self.env):
      from google.cloud import pubsub_v1  # pylint: disable=import-outside-toplevel
      self.publisher = pubsub_v1.PublisherClient()
      self.subscriber = pubsub_v1.SubscriberClient()
    list(self.publisher.list_topics(project=f'projects/{PROJECT}',
                                    timeout=30))

  def log(self) -> str:
    with open(os.path.join(self._work_dir, 'emulator.log'), 'rb') as handle:
      return handle.read().decode('utf-8', 'replace')[-2000:]

  def stop(self):
    """Stops the emulator's process group (gcloud and its java child)."""
    if self._process is None:
      return
    for sig, wait_seconds in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
      try:
        os.killpg(self._process.pid, sig)
      except ProcessLookupError:
        break
      try:
        self._process.wait(wait_seconds)
        break
      except subprocess.TimeoutExpired:
        continue
    self._process = None
    self._log.close()

  def create(self, name: str):
    """Creates topic `name` and subscription `name`; gives both paths."""
    topic = self.publisher.topic_path(PROJECT, name)
    subscription = self.subscriber.subscription_path(PROJECT, name)
    self.publisher.create_topic(name=topic)
    self.subscriber.create_subscription(name=subscription, topic=topic)
    return topic, subscription

  def publish(self, topic: str, bodies) -> dict:
    """Publishes each bytes body; gives {message id: publish-call time}."""
    sent = [(self.publisher.publish(topic, body), time.time())
            for body in bodies]
    return {future.result(): sent_at for future, sent_at in sent}

  def pull_all(self, subscription: str, max_messages: int = 100) -> list:
    """Pulls and acknowledges what the subscription holds now."""
    messages = []
    while True:
      response = self.subscriber.pull(
          subscription=subscription, max_messages=max_messages,
          return_immediately=True, timeout=10)
      if not response.received_messages:
        return messages
      self.subscriber.acknowledge(
          subscription=subscription,
          ack_ids=[received.ack_id for received in response.received_messages])
      messages.extend(received.message
                      for received in response.received_messages)


@contextlib.contextmanager
def _environ(values: dict):
  saved = {name: os.environ.get(name) for name in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
